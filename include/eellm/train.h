/* Training runs (what `eellm train` does) and their loss curves (`eellm plot`).
 *
 * eellm_train_run is the training loop around the task graph: one iteration is
 * one submission (every micro-batch's forward and backward, the optimizer) and
 * one wait; checkpoints, metrics, validation and resume around it. It prints
 * nothing: it reports through the caller's on_event callback as it goes, and
 * returns a failure as a status with one line in err. */
#ifndef EELLM_TRAIN_H
#define EELLM_TRAIN_H

#include <stddef.h>

#include "eellm.h"
#include "eellm/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the training loop --------------------------------------------------- */

enum eellm_train_event_kind {
  EELLM_TRAIN_START,       /* before the first step: what is trained, on what, from where */
  EELLM_TRAIN_STEP,        /* after every optimizer step */
  EELLM_TRAIN_VALIDATION,  /* after every validation pass (eval_interval, last step) */
  EELLM_TRAIN_INTERRUPTED, /* SIGINT or SIGTERM: stopped after `step`, checkpoint written */
  EELLM_TRAIN_TRACE,       /* the trace file of this rank was written */
  EELLM_TRAIN_FAILED,      /* the run fails: `message` is the error also left in err */
};

/* What an event carries; fields the kind does not name are 0 or NULL. Pointers
 * are valid during the callback only. */
struct eellm_train_event {
  enum eellm_train_event_kind kind;
  unsigned step;                /* STEP, VALIDATION, INTERRUPTED: 1-based; START: steps already done */
  unsigned steps;               /* the run's last step */
  /* START */
  const char *model_name;       /* the spec's name, or "model" */
  size_t n_params;
  unsigned global_batch, seq_len, micro_batches;
  unsigned slices; /* each micro-batch runs as this many slices (eellm_model_slices) */
  const char *data_path;
  size_t data_tokens;
  double unigram_entropy;       /* nats/token of the data's token frequencies */
  int tune_exits;               /* backbone frozen (EE-Tuning) */
  const char *checkpoint;       /* START, INTERRUPTED: the run's checkpoint file */
  const char *layout;           /* START under MPI: one line per rank (stage, layers, replica,
                                   tensor index, AdamW moment bytes kept); NULL in one process */
  /* STEP, VALIDATION: per exit, the final head last (n_exits entries) */
  unsigned n_exits;
  const unsigned *exit_layers;  /* 1-based layer each exit reads */
  const double *losses;         /* mean cross-entropy, nats/token */
  /* STEP */
  double lr, grad_norm, tokens_per_s;
  double eta_s;                 /* estimated seconds to the last step */
  /* TRACE */
  const char *trace_file;       /* this rank's file */
  long trace_tasks;
  /* STEP, with skip_nonfinite: this step's update was skipped (a non-finite
   * gradient norm), and how many steps of the run were (resumed runs included) */
  int skipped;
  unsigned skipped_steps;
  /* FAILED: the one-line error, reported where it happens (before MPI shuts
   * down, so that a launcher relays it before any rank's exit ends the job) */
  const char *message;
};

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
  /* Called on rank 0 for every event but TRACE, which every rank reports for
   * its own file, and FAILED, which the rank that has the error reports (rank
   * 0 for bad input); on the thread that called eellm_train_run. May be NULL. */
  void (*on_event)(void *ctx, const struct eellm_train_event *event);
  void *ctx;
  /* A step whose gradient norm is NaN or inf applies no update (parameters and
   * moments unchanged) and the run goes on, counting it; without it such a step
   * stops the run. */
  int skip_nonfinite;
};

/* Runs the training (under mpirun: brings MPI up, one rank per pipeline
 * stage, every rank calling this). Handles SIGINT and SIGTERM while it runs:
 * they end the run after the current step with a checkpoint. A non-finite
 * learning rate, exit loss or gradient norm (unless skip_nonfinite skips the
 * step) stops the run with status 1 and "step N: ..." naming which value and
 * the checkpoint kept; a checkpoint is never replaced by non-finite weights,
 * and metrics.jsonl holds JSON numbers only (null for a non-finite one).
 * Temporary checkpoint files that killed runs left behind are removed at the
 * start. Returns 0 when
 * done (or interrupted with a checkpoint written), 1 on a runtime failure, 2
 * on bad input; on failure err holds one line, "rank N: "-prefixed on ranks
 * other than 0, or is empty when another rank reports it (bad input is
 * reported by rank 0 alone). */
EELLM_API int eellm_train_run(const struct eellm_train_options *o, char *err, size_t errlen);

/* ---- loss curves --------------------------------------------------------- */

/* Reads metrics_path (one JSON object per step: "step", "loss" and on
 * evaluation steps "val_loss", one entry per exit, final head last) and writes
 * svg_path atomically (temp file, fsync, rename): per exit the training loss
 * (raw and smoothed) and the validation loss, titled with the name of the
 * metrics file's directory. Lines that are not such objects are skipped, each
 * with a warning ("PATH:LINE: line skipped: why") passed to warn, then one
 * with the count; of a step logged twice the last line counts.
 * Labels: n_labels > 0 names every exit (a different count is an error); else
 * spec (may be NULL) gives "exit k (layer L)" and "final (layer N)" when its
 * exits match the metrics (else a warning to warn); else "exit 0", "exit 1",
 * ..., "final". warn may be NULL.
 * Returns 0, or -1 with a one-line error in err (missing or unreadable file, no
 * valid line, wrong label count, unwritable output). */
EELLM_API int eellm_plot_metrics(const char *metrics_path, const char *svg_path,
                                 const Eellm__Model *spec, const char *const *labels,
                                 size_t n_labels, void (*warn)(void *ctx, const char *message),
                                 void *warn_ctx, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
