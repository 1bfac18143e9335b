/* Between the trace recorder (trace_record.c) and its file writers (trace_write.c). */
#ifndef EELLM_RUNTIME_TRACE_IMPL_H
#define EELLM_RUNTIME_TRACE_IMPL_H

#include <stddef.h>
#include <stdio.h>

/* One task as recorded. Times on StarPU's clock (microseconds since starpu_init). */
struct trace_event {
  const char *name; /* the codelet's name (static) */
  int kind, micro, layer, step, worker, priority;
  double submit_us, start_us, end_us;
  double flops; /* model FLOPs, 0 where not counted */
};

/* One StarPU worker, with StarPU's own counts over the trace (a cross-check). */
struct trace_worker {
  char name[64];
  unsigned executed_tasks;
  double executing_us;
};

/* What the writers write: events sorted by start time. */
struct trace_content {
  const struct trace_event *events;
  size_t n_events;
  const struct trace_worker *workers;
  int n_workers, rank, n_ranks;
  double origin_us;  /* StarPU's clock at eellm_trace_start */
  double offset_us;  /* added to every time (clock alignment across ranks) */
};

/* Each returns 0, or -1 if a write failed (errno set). */
int trace_write_chrome(FILE *out, const struct trace_content *c);
int trace_write_paje(FILE *out, const struct trace_content *c);

#endif
