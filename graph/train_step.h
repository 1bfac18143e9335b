/* The training step's submission state: the activation pools of each stage's
 * micro-batch slots and the loss statistics of every exit, read back at the
 * next wait. */
#ifndef EELLM_GRAPH_TRAIN_STEP_H
#define EELLM_GRAPH_TRAIN_STEP_H

#include "graph/model.h"

/* Frees the step's bookkeeping (after all its tasks finished). */
void eellm_step_free(struct eellm_model *m);

#endif
