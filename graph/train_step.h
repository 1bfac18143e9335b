/* The training step's submission state: the activation pools of each stage's
 * micro-batch slots and the loss statistics of every exit, read back at the
 * next wait. */
#ifndef EELLM_GRAPH_TRAIN_STEP_H
#define EELLM_GRAPH_TRAIN_STEP_H

#include "graph/model.h"

/* Submits the backward phases still queued for 1F1B's order (train_step.c):
 * before the optimizer, a wait or a sync. */
void eellm_step_flush(struct eellm_model *m);
/* Frees the step's bookkeeping (after all its tasks finished). */
void eellm_step_free(struct eellm_model *m);

#endif
