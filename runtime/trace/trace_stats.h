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
 *   and did not lengthen the step; exit work on the path did. */
#ifndef EELLM_RUNTIME_TRACE_STATS_H
#define EELLM_RUNTIME_TRACE_STATS_H

#include <stddef.h>
#include <stdio.h>

#include "codelets/codelets.h"

struct eellm_trace_task {
  int row, name;                 /* indices into rows and names */
  int kind, step, micro, layer, exit;
  double submit, start, end;     /* microseconds */
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
int eellm_trace_load(struct eellm_trace *t, const char *const *paths, int n, char *err,
                     size_t errlen);
void eellm_trace_free(struct eellm_trace *t);

/* Exit heads' forward and backward, and their losses. */
int eellm_trace_is_exit_work(const struct eellm_trace_task *task);

struct eellm_trace_step {
  int step;
  double start, end;             /* the window */
  size_t n_tasks, path_tasks;
  double path_busy;              /* sum of the path's task durations */
  double path_kind[EELLM_N_KINDS];
  double exit_work, exit_on_path;
};

struct eellm_trace_stats {
  double window;                 /* sum of the steps' windows */
  double *busy, *bubble;         /* per row (idle = window - busy) */
  size_t kind_count[EELLM_N_KINDS];
  double kind_time[EELLM_N_KINDS];
  struct eellm_trace_step *steps; /* in step order */
  int n_steps;
  unsigned char *on_path;        /* per task: on its step's critical path */
  size_t outside;                /* tasks outside any step (not in the figures) */
  double exit_work, exit_on_path;
};

int eellm_trace_analyze(const struct eellm_trace *t, struct eellm_trace_stats *s);
void eellm_trace_stats_free(struct eellm_trace_stats *s);

/* The self-contained HTML report: Gantt chart and every figure. 0, or -1 if a write failed. */
int eellm_trace_write_html(FILE *out, const struct eellm_trace *t,
                           const struct eellm_trace_stats *s, const char *title);

#endif
