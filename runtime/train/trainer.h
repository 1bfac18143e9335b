/* `eellm train`: the training loop around the task graph. One iteration is one
 * submission (every micro-batch's forward and backward, the optimizer) and one
 * wait; checkpoints, metrics, validation and resume around it. */
#ifndef EELLM_RUNTIME_TRAINER_H
#define EELLM_RUNTIME_TRAINER_H

#include "runtime/engine/trace.h"

struct eellm_train_options {
  const char *model_path;  /* model spec; NULL: the spec of --init or of the run's checkpoint */
  const char *train_path;  /* training spec */
  const char *data_path;   /* token file */
  const char *val_path;    /* token file or NULL */
  const char *out_dir;     /* runs/NAME */
  const char *init_path;   /* start from these weights (a checkpoint) instead of random */
  int resume;              /* continue from out_dir/checkpoint.safetensors */
  int tune_exits;          /* freeze the backbone, train the exits only (EE-Tuning) */
  unsigned steps;          /* overrides the training spec's steps when non-zero */
  const char *trace_path;  /* record every task of the run into this file, or NULL */
  enum eellm_trace_format trace_format;
};

/* Returns the process exit status: 0 done (or interrupted with a checkpoint
 * written), 1 runtime failure, 2 bad input. */
int eellm_train_run(const struct eellm_train_options *o);

#endif
