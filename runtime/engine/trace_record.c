/* The trace recorder: per-worker event buffers filled by task callbacks. */
#include "runtime/engine/trace.h"

#include <errno.h>
#include <pthread.h>
#include <starpu.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "eellm/outfile.h"
#include "runtime/engine/trace_impl.h"

/* The installed API names the task kinds (enum eellm_trace_kind) with the
 * values the codelets use. */
_Static_assert((int)EELLM_TRACE_N_KINDS == (int)EELLM_N_KINDS, "trace kinds match task kinds");
_Static_assert((int)EELLM_TRACE_FORWARD == (int)EELLM_KIND_FORWARD &&
                   (int)EELLM_TRACE_BACKWARD == (int)EELLM_KIND_BACKWARD &&
                   (int)EELLM_TRACE_EXIT == (int)EELLM_KIND_EXIT &&
                   (int)EELLM_TRACE_LOSS == (int)EELLM_KIND_LOSS &&
                   (int)EELLM_TRACE_OPTIMIZER == (int)EELLM_KIND_OPTIMIZER &&
                   (int)EELLM_TRACE_COLLECTIVE == (int)EELLM_KIND_COLLECTIVE &&
                   (int)EELLM_TRACE_TRANSFER == (int)EELLM_KIND_TRANSFER &&
                   (int)EELLM_TRACE_OTHER == (int)EELLM_KIND_OTHER,
               "trace kinds match task kinds");

enum { INITIAL_EVENTS = 1 << 14 }; /* preallocated per worker; buffers double when full */

/* One writer per buffer; aligned so that workers do not share cache lines. */
struct buffer {
  _Alignas(64) struct trace_event *events;
  size_t n, cap;
  size_t lost; /* events dropped for want of memory */
};

/* The task's callback argument: what only the submitter knows. */
struct task_arg {
  int kind, micro, layer, step;
  double flops;
};

static struct {
  atomic_int recording, step;
  char *path;
  enum eellm_trace_format format;
  int rank, n_ranks, n_workers, previous_profiling;
  double origin_us, offset_us;
  /* n_workers + 1: the last takes callbacks run outside worker threads, under shared_lock. */
  struct buffer *buffers;
  pthread_mutex_t shared_lock;
} trace = {.shared_lock = PTHREAD_MUTEX_INITIALIZER};

static const char *const kind_names[EELLM_N_KINDS] = {
    [EELLM_KIND_FORWARD] = "forward",       [EELLM_KIND_BACKWARD] = "backward",
    [EELLM_KIND_EXIT] = "exit",             [EELLM_KIND_LOSS] = "loss",
    [EELLM_KIND_OPTIMIZER] = "optimizer",   [EELLM_KIND_COLLECTIVE] = "collective",
    [EELLM_KIND_TRANSFER] = "transfer",     [EELLM_KIND_OTHER] = "other"};

/* Tableau 10, one colour per kind. */
static const char *const kind_colors[EELLM_N_KINDS] = {
    [EELLM_KIND_FORWARD] = "#4e79a7",    [EELLM_KIND_BACKWARD] = "#f28e2b",
    [EELLM_KIND_EXIT] = "#59a14f",       [EELLM_KIND_LOSS] = "#e15759",
    [EELLM_KIND_OPTIMIZER] = "#b07aa1",  [EELLM_KIND_COLLECTIVE] = "#76b7b2",
    [EELLM_KIND_TRANSFER] = "#edc948",   [EELLM_KIND_OTHER] = "#bab0ac"};

static int known_kind(int kind) { return kind >= 0 && kind < EELLM_N_KINDS; }

const char *eellm_trace_kind_name(int kind) {
  return kind_names[known_kind(kind) ? kind : EELLM_KIND_OTHER];
}

const char *eellm_trace_kind_color(int kind) {
  return kind_colors[known_kind(kind) ? kind : EELLM_KIND_OTHER];
}

int eellm_trace_kind_parse(const char *name) {
  for (int k = 0; k < EELLM_N_KINDS; k++)
    if (strcmp(name, kind_names[k]) == 0) return k;
  return -1;
}

int eellm_trace_format_parse(const char *name, enum eellm_trace_format *format) {
  if (strcmp(name, "chrome") == 0) *format = EELLM_TRACE_CHROME;
  else if (strcmp(name, "paje") == 0) *format = EELLM_TRACE_PAJE;
  else return -1;
  return 0;
}

void eellm_trace_rank_path(const char *path, int rank, int n_ranks, char *out, size_t outlen) {
  if (n_ranks <= 1) {
    snprintf(out, outlen, "%s", path);
    return;
  }
  const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
  int stem = dot && (!slash || dot > slash + 1) ? (int)(dot - path) : (int)strlen(path);
  snprintf(out, outlen, "%.*s.rank%d%s", stem, path, rank, path + stem);
}

/* ---- recording ------------------------------------------------------------ */

void *eellm_trace_task_arg(const struct eellm_task_info *info) {
  if (!atomic_load_explicit(&trace.recording, memory_order_relaxed)) return NULL;
  struct task_arg *a = malloc(sizeof *a);
  if (!a) {
    fprintf(stderr, "eellm: out of memory tracing a task\n");
    abort();
  }
  a->kind = info->kind;
  a->micro = info->micro;
  a->layer = info->layer;
  a->flops = info->flops;
  a->step = atomic_load_explicit(&trace.step, memory_order_relaxed);
  return a;
}

static void append(struct buffer *b, const struct trace_event *e) {
  if (b->n == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : INITIAL_EVENTS;
    struct trace_event *grown = realloc(b->events, cap * sizeof *grown);
    if (!grown) {
      b->lost++;
      return;
    }
    b->events = grown;
    b->cap = cap;
  }
  b->events[b->n++] = *e;
}

void eellm_trace_task_done(void *arg) {
  const struct task_arg *a = arg;
  struct starpu_task *task = starpu_task_get_current();
  struct starpu_profiling_task_info *p = task ? task->profiling_info : NULL;
  if (!p) return;
  struct trace_event e = {
      .name = task->name, .kind = a->kind, .micro = a->micro, .layer = a->layer,
      .step = a->step, .worker = p->workerid, .priority = task->priority,
      .submit_us = starpu_timing_timespec_to_us(&p->submit_time),
      .start_us = starpu_timing_timespec_to_us(&p->start_time),
      .end_us = starpu_timing_timespec_to_us(&p->end_time)};
  e.flops = a->flops;
  int self = starpu_worker_get_id();
  if (self >= 0 && self < trace.n_workers) {
    append(&trace.buffers[self], &e);
    return;
  }
  pthread_mutex_lock(&trace.shared_lock);
  append(&trace.buffers[trace.n_workers], &e);
  pthread_mutex_unlock(&trace.shared_lock);
}

void eellm_trace_set_step(int step) {
  atomic_store_explicit(&trace.step, step, memory_order_relaxed);
}

void eellm_trace_set_clock_offset(double offset_us) { trace.offset_us = offset_us; }

/* ---- start and stop ------------------------------------------------------- */

static void release(void) {
  for (int w = 0; trace.buffers && w <= trace.n_workers; w++) free(trace.buffers[w].events);
  free(trace.buffers);
  free(trace.path);
  trace.buffers = NULL;
  trace.path = NULL;
}

/* Creating (and dropping) the temporary file now reports an unwritable path
 * before the run, not after it. */
static int check_writable(const char *path, char *err, size_t errlen) {
  struct eellm_outfile f;
  if (eellm_outfile_open(&f, path, err, errlen) != 0) return -1;
  eellm_outfile_abort(&f);
  return 0;
}

int eellm_trace_start(const char *path, enum eellm_trace_format format, int rank, int n_ranks,
                      char *err, size_t errlen) {
  if (trace.buffers) {
    snprintf(err, errlen, "%s: a trace is already recording", path);
    return -1;
  }
  char file[4096];
  eellm_trace_rank_path(path, rank, n_ranks, file, sizeof file);
  if (check_writable(file, err, errlen) != 0) return -1;
  trace.n_workers = (int)starpu_worker_get_count();
  trace.buffers = calloc((size_t)trace.n_workers + 1, sizeof *trace.buffers);
  trace.path = strdup(file);
  int allocated = trace.buffers && trace.path;
  for (int w = 0; allocated && w < trace.n_workers; w++) {
    trace.buffers[w].events = malloc(INITIAL_EVENTS * sizeof *trace.buffers[w].events);
    trace.buffers[w].cap = INITIAL_EVENTS;
    allocated = trace.buffers[w].events != NULL;
  }
  if (!allocated) {
    release();
    snprintf(err, errlen, "%s: out of memory", path);
    return -1;
  }
  trace.format = format;
  trace.rank = rank;
  trace.n_ranks = n_ranks;
  trace.offset_us = 0;
  trace.previous_profiling = starpu_profiling_status_set(STARPU_PROFILING_ENABLE);
  struct starpu_profiling_worker_info unused;
  for (int w = 0; w < trace.n_workers; w++) starpu_profiling_worker_get_info(w, &unused); /* resets */
  trace.origin_us = starpu_timing_now();
  atomic_store(&trace.step, -1);
  atomic_store(&trace.recording, 1);
  return 0;
}

static int by_start(const void *a, const void *b) {
  const struct trace_event *x = a, *y = b;
  return (x->start_us > y->start_us) - (x->start_us < y->start_us);
}

/* Every buffer's events in one array, sorted by start time. */
static struct trace_event *gather(size_t *n_events, size_t *lost) {
  size_t n = 0;
  *lost = 0;
  for (int w = 0; w <= trace.n_workers; w++) {
    n += trace.buffers[w].n;
    *lost += trace.buffers[w].lost;
  }
  struct trace_event *all = malloc((n ? n : 1) * sizeof *all);
  if (!all) return NULL;
  size_t at = 0;
  for (int w = 0; w <= trace.n_workers; w++) {
    if (!trace.buffers[w].n) continue; /* the shared buffer may have no array */
    memcpy(all + at, trace.buffers[w].events, trace.buffers[w].n * sizeof *all);
    at += trace.buffers[w].n;
  }
  qsort(all, n, sizeof *all, by_start);
  *n_events = n;
  return all;
}

static struct trace_worker *describe_workers(void) {
  struct trace_worker *workers = calloc((size_t)trace.n_workers + 1, sizeof *workers);
  if (!workers) return NULL;
  for (int w = 0; w < trace.n_workers; w++) {
    struct starpu_profiling_worker_info info;
    starpu_worker_get_name(w, workers[w].name, sizeof workers[w].name);
    if (starpu_profiling_worker_get_info(w, &info) == 0) {
      workers[w].executed_tasks = (unsigned)info.executed_tasks;
      workers[w].executing_us = starpu_timing_timespec_to_us(&info.executing_time);
    }
  }
  return workers;
}

static int write_file(const struct trace_content *c, char *err, size_t errlen) {
  struct eellm_outfile f;
  if (eellm_outfile_open(&f, trace.path, err, errlen) != 0) return -1;
  int written = trace.format == EELLM_TRACE_PAJE ? trace_write_paje(f.fp, c)
                                                 : trace_write_chrome(f.fp, c);
  if (written != 0) {
    snprintf(err, errlen, "%s: cannot write: %s", trace.path, strerror(errno));
    eellm_outfile_abort(&f);
    return -1;
  }
  return eellm_outfile_commit(&f, err, errlen);
}

long eellm_trace_stop(char *err, size_t errlen) {
  if (!trace.buffers) return 0;
  starpu_task_wait_for_all(); /* every traced task's callback has run */
  atomic_store(&trace.recording, 0);
  size_t n = 0, lost = 0;
  struct trace_event *events = gather(&n, &lost);
  struct trace_worker *workers = describe_workers();
  starpu_profiling_status_set(trace.previous_profiling);
  long status = -1;
  if (!events || !workers) {
    snprintf(err, errlen, "%s: out of memory", trace.path);
  } else if (lost) {
    snprintf(err, errlen, "%s: %zu task events lost for want of memory", trace.path, lost);
  } else {
    struct trace_content c = {events, n, workers, trace.n_workers, trace.rank, trace.n_ranks,
                              trace.origin_us, trace.offset_us};
    if (write_file(&c, err, errlen) == 0) status = (long)n;
  }
  free(events);
  free(workers);
  release();
  return status;
}
