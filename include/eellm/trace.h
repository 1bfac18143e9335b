/* Task traces: every task eellm submits while a trace records, with its kind,
 * micro-batch, layer and training step, the worker that ran it and its submit,
 * start and end times (StarPU's profiling info). Written when the trace stops,
 * as Chrome Trace Event JSON (Perfetto, chrome://tracing, `eellm trace`) or as
 * Paje (ViTE, pajeng).
 *
 * Each task's callback appends one event to the buffer of the worker thread
 * that ran it (one writer per buffer, no lock). Nothing is hooked into
 * eellm_submit while no trace records.
 *
 * Several ranks: every rank calls eellm_trace_start right after a barrier
 * (times count from that call) and writes its own file; `eellm trace` reads
 * the ranks' files together. eellm_trace_set_clock_offset corrects a rank's
 * times for a measured skew against rank 0.
 *
 * Reading: the second half of this header reads trace files back and computes
 * the figures `eellm trace` reports (see there). */
#ifndef EELLM_TRACE_H
#define EELLM_TRACE_H

#include <stddef.h>
#include <stdio.h>

#include "eellm/api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- recording ----------------------------------------------------------- */
enum eellm_trace_format { EELLM_TRACE_CHROME = 0, EELLM_TRACE_PAJE = 1 };

/* "chrome" or "paje": 0, else -1. */
EELLM_API int eellm_trace_format_parse(const char *name, enum eellm_trace_format *format);

/* The file rank `rank` of n_ranks writes for `path`: path itself for a single
 * rank, else path with ".rank<N>" before its extension (t.json -> t.rank1.json). */
EELLM_API void eellm_trace_rank_path(const char *path, int rank, int n_ranks, char *out,
                                     size_t outlen);

/* Starts recording the tasks submitted from now on; StarPU must be running
 * (profiling is switched on until eellm_trace_stop). Checks that the file can
 * be created. 0, or -1 with a one-line message in err. */
EELLM_API int eellm_trace_start(const char *path, enum eellm_trace_format format, int rank,
                                int n_ranks, char *err, size_t errlen);

/* Adds offset_us to every time this rank writes (aligns its clock on rank 0's). */
EELLM_API void eellm_trace_set_clock_offset(double offset_us);

/* Tags the tasks submitted from now on with training step `step` (-1: outside
 * any step, e.g. validation). The trace's figures are computed per step. */
EELLM_API void eellm_trace_set_step(int step);

/* Waits for every submitted task, stops recording and writes the file
 * atomically. Returns the number of tasks written (0 when no trace recorded),
 * or -1 with a one-line message in err. Call it before StarPU shuts down. */
EELLM_API long eellm_trace_stop(char *err, size_t errlen);

/* What a task is, as trace files name it. The same values as the library's
 * internal task kinds. */
enum eellm_trace_kind {
  EELLM_TRACE_FORWARD,
  EELLM_TRACE_BACKWARD,
  EELLM_TRACE_EXIT,
  EELLM_TRACE_LOSS,
  EELLM_TRACE_OPTIMIZER,
  EELLM_TRACE_COLLECTIVE,
  EELLM_TRACE_TRANSFER, /* data moved between ranks (StarPU-MPI) */
  EELLM_TRACE_OTHER,
  EELLM_TRACE_N_KINDS
};

/* Task kinds (enum eellm_trace_kind) in trace files: "forward", "backward",
 * "exit", "loss", "optimizer", "collective", "transfer", "other"; each with a
 * colour ("#rrggbb") shared by the Paje file and the HTML report. */
EELLM_API const char *eellm_trace_kind_name(int kind);
EELLM_API const char *eellm_trace_kind_color(int kind);
/* The kind named `name`, or -1. */
EELLM_API int eellm_trace_kind_parse(const char *name);

/* ---- reading ------------------------------------------------------------- */
/* Reading trace files (Chrome Trace Event JSON as eellm writes them, one file
 * per rank) and the figures `eellm trace` reports. Figures cover the tasks of
 * training steps (tagged with a step >= 0); a step's window runs from the
 * first start to the last end of its tasks on any rank and worker.
 *
 * - busy: time a worker ran tasks, within the steps' windows;
 *   idle = window - busy (bubble included).
 * - bubble: idle time between a worker's first and last task of a step (the
 *   worker had started the step and had more to do, but waited); the rest of
 *   idle is before its first or after its last task of the step.
 * - critical path of a step: walking back from the task that ends last, each
 *   time to the task (any rank, any worker) that ended latest before the
 *   current one started (the last-arrival heuristic: StarPU does not report
 *   the dependencies of inserted tasks). Its waits are the step's time covered
 *   by no path task.
 * - exit work: tasks of kind exit and the exits' losses. Hidden exit work is
 *   exit work off the critical path: it ran beside the chain of tasks that
 *   set the step's length, in time its worker would otherwise have spent idle,
 *   and did not lengthen the step; exit work on the path did.
 * - per op (task name, e.g. linear_fwd): its tasks, their time and the part
 *   of it on the critical path.
 * - per rank: each kind's task time on the rank, and the part of it on the
 *   critical path (collectives: what they added to the steps' length). A
 *   rank's collective time overlapped is the part of its collective tasks
 *   during which another worker of the rank ran a task of another kind: the
 *   communication hidden behind compute (none with one worker per rank). */
struct eellm_trace_task {
  int row, name;                 /* indices into rows and names */
  int kind, step, micro, layer, exit;
  double submit, start, end;     /* microseconds */
  double flops;                  /* model FLOPs ("flops" in the file), 0 where not counted */
};

/* One worker of one rank. */
struct eellm_trace_row {
  int rank, worker;
  char *name;                    /* the worker's name, e.g. "CPU 0" */
};

struct eellm_trace {
  struct eellm_trace_task *tasks; /* sorted by start time */
  size_t n_tasks;
  struct eellm_trace_row *rows;   /* sorted by rank, then worker */
  int n_rows;
  char **names;
  int n_names;
};

/* Reads and merges n files (the ranks of one run). 0, or -1 with "FILE: why" in err. */
EELLM_API int eellm_trace_load(struct eellm_trace *t, const char *const *paths, int n, char *err,
                               size_t errlen);
EELLM_API void eellm_trace_free(struct eellm_trace *t);

/* Exit heads' forward and backward, and their losses. */
EELLM_API int eellm_trace_is_exit_work(const struct eellm_trace_task *task);

struct eellm_trace_step {
  int step;
  double start, end;             /* the window */
  size_t n_tasks, path_tasks;
  double path_busy;              /* sum of the path's task durations */
  double path_kind[EELLM_TRACE_N_KINDS];
  double exit_work, exit_on_path;
};

struct eellm_trace_stats {
  double window;                 /* sum of the steps' windows */
  double *busy, *bubble;         /* per row (idle = window - busy) */
  size_t kind_count[EELLM_TRACE_N_KINDS];
  double kind_time[EELLM_TRACE_N_KINDS];
  struct eellm_trace_step *steps; /* in step order */
  int n_steps;
  unsigned char *on_path;        /* per task: on its step's critical path */
  size_t outside;                /* tasks outside any step (not in the figures) */
  double exit_work, exit_on_path;
  int n_ranks;            /* the highest rank + 1 */
  double *rank_kind;      /* [rank * EELLM_TRACE_N_KINDS + kind]: task time */
  double *rank_kind_path; /* the same, on the critical path */
  double *rank_overlap;   /* per rank: collective time overlapped by other kinds' tasks */
  size_t *op_count;       /* per name (eellm_trace.names): tasks */
  double *op_time, *op_path; /* per name: task time, and the part on the critical path */
  double *op_flops;          /* per name: model FLOPs (0: not counted) */
};

EELLM_API int eellm_trace_analyze(const struct eellm_trace *t, struct eellm_trace_stats *s);
EELLM_API void eellm_trace_stats_free(struct eellm_trace_stats *s);

/* The self-contained HTML report: Gantt chart and every figure. 0, or -1 if a write failed. */
EELLM_API int eellm_trace_write_html(FILE *out, const struct eellm_trace *t,
                                     const struct eellm_trace_stats *s, const char *title);

#ifdef __cplusplus
}
#endif
#endif
