/* Trace files in, figures out (definitions in include/eellm/trace.h). */
#include "eellm/trace.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>


/* ---- loading -------------------------------------------------------------- */

/* Grows *items (of `size` bytes each) so that it holds n + 1. */
static int reserve(void **items, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return 0;
  size_t grown = *cap ? 2 * *cap : 64;
  void *p = realloc(*items, grown * size);
  if (!p) return -1;
  *items = p;
  *cap = grown;
  return 0;
}

struct loader {
  struct eellm_trace *t;
  size_t task_cap, row_cap, name_cap;
};

static int intern_name(struct loader *l, const char *name) {
  struct eellm_trace *t = l->t;
  for (int i = t->n_names - 1; i >= 0; i--)
    if (strcmp(t->names[i], name) == 0) return i;
  size_t cap = l->name_cap;
  if (reserve((void **)&t->names, &cap, (size_t)t->n_names, sizeof *t->names) != 0) return -1;
  l->name_cap = cap;
  if (!(t->names[t->n_names] = strdup(name))) return -1;
  return t->n_names++;
}

/* The row of (rank, worker), added if new. */
static int row_of(struct loader *l, int rank, int worker) {
  struct eellm_trace *t = l->t;
  for (int i = 0; i < t->n_rows; i++)
    if (t->rows[i].rank == rank && t->rows[i].worker == worker) return i;
  size_t cap = l->row_cap;
  if (reserve((void **)&t->rows, &cap, (size_t)t->n_rows, sizeof *t->rows) != 0) return -1;
  l->row_cap = cap;
  char name[32];
  snprintf(name, sizeof name, "worker %d", worker);
  t->rows[t->n_rows] = (struct eellm_trace_row){rank, worker, strdup(name)};
  if (!t->rows[t->n_rows].name) return -1;
  return t->n_rows++;
}

static int int_arg(json_t *args, const char *key) {
  json_t *v = json_object_get(args, key);
  return json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

static int read_task(struct loader *l, json_t *ev, int row) {
  json_t *args = json_object_get(ev, "args");
  const char *kind = json_string_value(json_object_get(args, "kind"));
  if (!kind) kind = json_string_value(json_object_get(ev, "cat"));
  const char *name = json_string_value(json_object_get(ev, "name"));
  int k = kind ? eellm_trace_kind_parse(kind) : -1;
  double ts = json_number_value(json_object_get(ev, "ts"));
  double dur = json_number_value(json_object_get(ev, "dur"));
  json_t *submit = json_object_get(args, "submit_us"), *flops = json_object_get(args, "flops");
  struct eellm_trace_task task = {
      .row = row, .name = intern_name(l, name ? name : "task"),
      .kind = k < 0 ? EELLM_TRACE_OTHER : k, .step = int_arg(args, "step"),
      .micro = int_arg(args, "micro"), .layer = int_arg(args, "layer"),
      .exit = int_arg(args, "exit"),
      .submit = json_is_number(submit) ? json_number_value(submit) : ts,
      .start = ts, .end = ts + dur};
  task.flops = json_is_number(flops) ? json_number_value(flops) : 0;
  if (task.name < 0) return -1;
  struct eellm_trace *t = l->t;
  if (reserve((void **)&t->tasks, &l->task_cap, t->n_tasks, sizeof *t->tasks) != 0) return -1;
  t->tasks[t->n_tasks++] = task;
  return 0;
}

enum { MAX_RANK = 1 << 20 }; /* pids are ranks: the per-rank figures hold one slot each */

/* 0, -1 out of memory, -2 a pid that is no rank. */
static int read_event(struct loader *l, json_t *ev) {
  const char *ph = json_string_value(json_object_get(ev, "ph"));
  const char *name = json_string_value(json_object_get(ev, "name"));
  json_t *pid = json_object_get(ev, "pid"), *tid = json_object_get(ev, "tid");
  if (!ph || !json_is_integer(pid) || !json_is_integer(tid)) return 0; /* not ours: skipped */
  if (json_integer_value(pid) < 0 || json_integer_value(pid) > MAX_RANK) return -2;
  int row = row_of(l, (int)json_integer_value(pid), (int)json_integer_value(tid));
  if (row < 0) return -1;
  if (strcmp(ph, "X") == 0) return read_task(l, ev, row);
  const char *label = json_string_value(json_object_get(json_object_get(ev, "args"), "name"));
  if (strcmp(ph, "M") == 0 && name && strcmp(name, "thread_name") == 0 && label) {
    char *copy = strdup(label);
    if (!copy) return -1;
    free(l->t->rows[row].name);
    l->t->rows[row].name = copy;
  }
  return 0;
}

static int read_file(struct loader *l, const char *path, char *err, size_t errlen) {
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  if (!root) {
    snprintf(err, errlen, "%s:%d: %s", path, jerr.line, jerr.text);
    return -1;
  }
  json_t *events = json_object_get(root, "traceEvents");
  int status = 0;
  if (!json_is_array(events)) {
    snprintf(err, errlen, "%s: no traceEvents array: not a Chrome trace", path);
    status = -1;
  }
  size_t i;
  json_t *ev;
  json_array_foreach(events, i, ev) {
    if (status != 0) break;
    int read = read_event(l, ev);
    if (read == -2)
      snprintf(err, errlen, "%s: event %zu: pid %" JSON_INTEGER_FORMAT " is not a rank (0..%d)",
               path, i, json_integer_value(json_object_get(ev, "pid")), MAX_RANK);
    else if (read != 0)
      snprintf(err, errlen, "%s: out of memory", path);
    if (read != 0) status = -1;
  }
  json_decref(root);
  return status;
}

static int by_start(const void *a, const void *b) {
  const struct eellm_trace_task *x = a, *y = b;
  return (x->start > y->start) - (x->start < y->start);
}

/* A row with its index before sorting. */
struct numbered_row {
  struct eellm_trace_row row;
  int before;
};

static int by_rank_worker(const void *a, const void *b) {
  const struct eellm_trace_row *x = &((const struct numbered_row *)a)->row;
  const struct eellm_trace_row *y = &((const struct numbered_row *)b)->row;
  return x->rank != y->rank ? (x->rank > y->rank) - (x->rank < y->rank)
                            : (x->worker > y->worker) - (x->worker < y->worker);
}

/* Rows in rank, worker order (tasks renumbered to match); tasks in start order. */
static int sort_trace(struct eellm_trace *t) {
  size_t n = (size_t)t->n_rows;
  struct numbered_row *sorted = malloc((n + 1) * sizeof *sorted);
  int *row_now = malloc((n + 1) * sizeof *row_now);
  if (!sorted || !row_now) {
    free(sorted);
    free(row_now);
    return -1;
  }
  for (size_t i = 0; i < n; i++) sorted[i] = (struct numbered_row){t->rows[i], (int)i};
  qsort(sorted, n, sizeof *sorted, by_rank_worker);
  for (size_t i = 0; i < n; i++) {
    t->rows[i] = sorted[i].row;
    row_now[sorted[i].before] = (int)i;
  }
  for (size_t i = 0; i < t->n_tasks; i++) t->tasks[i].row = row_now[t->tasks[i].row];
  free(sorted);
  free(row_now);
  qsort(t->tasks, t->n_tasks, sizeof *t->tasks, by_start);
  return 0;
}

int eellm_trace_load(struct eellm_trace *t, const char *const *paths, int n, char *err,
                     size_t errlen) {
  memset(t, 0, sizeof *t);
  struct loader l = {.t = t};
  for (int i = 0; i < n; i++)
    if (read_file(&l, paths[i], err, errlen) != 0) {
      eellm_trace_free(t);
      return -1;
    }
  if (sort_trace(t) != 0) {
    snprintf(err, errlen, "%s: out of memory", paths[0]);
    eellm_trace_free(t);
    return -1;
  }
  return 0;
}

void eellm_trace_free(struct eellm_trace *t) {
  for (int i = 0; i < t->n_rows; i++) free(t->rows[i].name);
  for (int i = 0; i < t->n_names; i++) free(t->names[i]);
  free(t->rows);
  free(t->names);
  free(t->tasks);
  memset(t, 0, sizeof *t);
}

/* ---- figures -------------------------------------------------------------- */

int eellm_trace_is_exit_work(const struct eellm_trace_task *task) {
  return task->kind == EELLM_TRACE_EXIT || (task->kind == EELLM_TRACE_LOSS && task->exit >= 0);
}

/* A task of a step, as the figures need it. */
struct ref {
  int step, row;
  double start, end;
  size_t task;
};

static int by_step(const void *a, const void *b) {
  const struct ref *x = a, *y = b;
  return (x->step > y->step) - (x->step < y->step);
}

static int by_row_start(const void *a, const void *b) {
  const struct ref *x = a, *y = b;
  if (x->row != y->row) return (x->row > y->row) - (x->row < y->row);
  return (x->start > y->start) - (x->start < y->start);
}

static int by_end(const void *a, const void *b) {
  const struct ref *x = a, *y = b;
  return (x->end > y->end) - (x->end < y->end);
}

/* Busy and bubble time of each row in one step; refs sorted by row, then start. */
static void row_figures(const struct ref *refs, size_t n, struct eellm_trace_stats *s) {
  for (size_t i = 0; i < n;) {
    int row = refs[i].row;
    double first = refs[i].start, last = refs[i].end, busy = 0;
    double run_start = refs[i].start, run_end = refs[i].end; /* union of overlapping tasks */
    for (; i < n && refs[i].row == row; i++) {
      if (refs[i].start > run_end) {
        busy += run_end - run_start;
        run_start = refs[i].start;
      }
      if (refs[i].end > run_end) run_end = refs[i].end;
      if (refs[i].end > last) last = refs[i].end;
    }
    busy += run_end - run_start;
    s->busy[row] += busy;
    s->bubble[row] += last - first - busy;
  }
}

/* Largest index below `below` whose task ended by `t`, or -1; refs sorted by end. */
static long last_ended_by(const struct ref *refs, long below, double t) {
  long lo = 0, hi = below; /* answer in [lo - 1, hi) */
  while (lo < hi) {
    long mid = lo + (hi - lo) / 2;
    if (refs[mid].end <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/* The task's slot in rank_kind and rank_kind_path. */
static size_t rank_kind(const struct eellm_trace *t, const struct eellm_trace_task *task) {
  return (size_t)t->rows[task->row].rank * EELLM_TRACE_N_KINDS + (size_t)task->kind;
}

/* The last-arrival walk; refs sorted by end. */
static void critical_path(const struct eellm_trace *t, const struct ref *refs, size_t n,
                          struct eellm_trace_step *step, struct eellm_trace_stats *s) {
  for (long i = (long)n - 1; i >= 0; i = last_ended_by(refs, i, refs[i].start)) {
    const struct eellm_trace_task *task = &t->tasks[refs[i].task];
    double d = task->end - task->start;
    s->on_path[refs[i].task] = 1;
    step->path_tasks++;
    step->path_busy += d;
    step->path_kind[task->kind] += d;
    s->rank_kind_path[rank_kind(t, task)] += d;
    s->op_path[task->name] += d;
    if (eellm_trace_is_exit_work(task)) step->exit_on_path += d;
  }
}

static void step_figures(const struct eellm_trace *t, struct ref *refs, size_t n, int index,
                         struct eellm_trace_stats *s) {
  struct eellm_trace_step *step = &s->steps[index];
  step->step = refs[0].step;
  step->n_tasks = n;
  step->start = refs[0].start;
  step->end = refs[0].end;
  for (size_t i = 0; i < n; i++) {
    const struct eellm_trace_task *task = &t->tasks[refs[i].task];
    double d = task->end - task->start;
    if (task->start < step->start) step->start = task->start;
    if (task->end > step->end) step->end = task->end;
    s->kind_count[task->kind]++;
    s->kind_time[task->kind] += d;
    s->rank_kind[rank_kind(t, task)] += d;
    s->op_count[task->name]++;
    s->op_time[task->name] += d;
    s->op_flops[task->name] += task->flops;
    if (eellm_trace_is_exit_work(task)) step->exit_work += d;
  }
  s->window += step->end - step->start;
  qsort(refs, n, sizeof *refs, by_row_start);
  row_figures(refs, n, s);
  qsort(refs, n, sizeof *refs, by_end);
  critical_path(t, refs, n, step, s);
  s->exit_work += step->exit_work;
  s->exit_on_path += step->exit_on_path;
}

/* A rank's busy spans: the union of its tasks other than collectives, in time order. */
struct spans {
  double *start, *end;
  size_t n, cap;
};

static int add_span(struct spans *sp, double start, double end) {
  if (sp->n && start <= sp->end[sp->n - 1]) {
    if (end > sp->end[sp->n - 1]) sp->end[sp->n - 1] = end;
    return 0;
  }
  size_t cap = sp->cap;
  if (reserve((void **)&sp->start, &cap, sp->n, sizeof *sp->start) != 0) return -1;
  if (reserve((void **)&sp->end, &sp->cap, sp->n, sizeof *sp->end) != 0) return -1;
  sp->start[sp->n] = start;
  sp->end[sp->n++] = end;
  return 0;
}

/* Time of [start, end] inside the spans. */
static double covered(const struct spans *sp, double start, double end) {
  size_t lo = 0, hi = sp->n; /* the first span ending after start */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (sp->end[mid] <= start)
      lo = mid + 1;
    else
      hi = mid;
  }
  double sum = 0;
  for (size_t i = lo; i < sp->n && sp->start[i] < end; i++)
    sum += (sp->end[i] < end ? sp->end[i] : end) - (sp->start[i] > start ? sp->start[i] : start);
  return sum;
}

/* rank_overlap: collective tasks of the steps against their rank's other tasks (tasks are in
 * start order, so each rank's spans are built by appending). */
static int collective_overlap(const struct eellm_trace *t, struct eellm_trace_stats *s) {
  struct spans *sp = calloc((size_t)s->n_ranks + 1, sizeof *sp);
  int status = sp ? 0 : -1;
  for (size_t i = 0; status == 0 && i < t->n_tasks; i++) {
    const struct eellm_trace_task *task = &t->tasks[i];
    if (task->step >= 0 && task->kind != EELLM_TRACE_COLLECTIVE)
      status = add_span(&sp[t->rows[task->row].rank], task->start, task->end);
  }
  for (size_t i = 0; status == 0 && i < t->n_tasks; i++) {
    const struct eellm_trace_task *task = &t->tasks[i];
    int rank = t->rows[task->row].rank;
    if (task->step >= 0 && task->kind == EELLM_TRACE_COLLECTIVE)
      s->rank_overlap[rank] += covered(&sp[rank], task->start, task->end);
  }
  for (int r = 0; sp && r < s->n_ranks; r++) {
    free(sp[r].start);
    free(sp[r].end);
  }
  free(sp);
  return status;
}

int eellm_trace_analyze(const struct eellm_trace *t, struct eellm_trace_stats *s) {
  memset(s, 0, sizeof *s);
  size_t rows = (size_t)t->n_rows + 1, n = 0;
  struct ref *refs = malloc((t->n_tasks + 1) * sizeof *refs);
  s->busy = calloc(rows, sizeof *s->busy);
  s->bubble = calloc(rows, sizeof *s->bubble);
  s->on_path = calloc(t->n_tasks + 1, 1);
  s->steps = calloc(t->n_tasks + 1, sizeof *s->steps); /* at most one step per task */
  s->n_ranks = t->n_rows ? t->rows[t->n_rows - 1].rank + 1 : 0;
  size_t slots = (size_t)s->n_ranks * EELLM_TRACE_N_KINDS + 1;
  s->rank_kind = calloc(slots, sizeof *s->rank_kind);
  s->rank_kind_path = calloc(slots, sizeof *s->rank_kind_path);
  s->rank_overlap = calloc((size_t)s->n_ranks + 1, sizeof *s->rank_overlap);
  size_t names = (size_t)t->n_names + 1;
  s->op_count = calloc(names, sizeof *s->op_count);
  s->op_time = calloc(names, sizeof *s->op_time);
  s->op_path = calloc(names, sizeof *s->op_path);
  s->op_flops = calloc(names, sizeof *s->op_flops);
  if (!refs || !s->busy || !s->bubble || !s->on_path || !s->steps || !s->rank_kind ||
      !s->rank_kind_path || !s->rank_overlap || !s->op_count || !s->op_time || !s->op_path ||
      !s->op_flops) {
    free(refs);
    eellm_trace_stats_free(s);
    return -1;
  }
  for (size_t i = 0; i < t->n_tasks; i++) {
    const struct eellm_trace_task *task = &t->tasks[i];
    if (task->step < 0) s->outside++;
    else refs[n++] = (struct ref){task->step, task->row, task->start, task->end, i};
  }
  qsort(refs, n, sizeof *refs, by_step);
  for (size_t lo = 0, hi; lo < n; lo = hi) {
    for (hi = lo; hi < n && refs[hi].step == refs[lo].step; hi++) {}
    step_figures(t, refs + lo, hi - lo, s->n_steps++, s);
  }
  free(refs);
  if (collective_overlap(t, s) != 0) {
    eellm_trace_stats_free(s);
    return -1;
  }
  return 0;
}

void eellm_trace_stats_free(struct eellm_trace_stats *s) {
  free(s->busy);
  free(s->bubble);
  free(s->on_path);
  free(s->steps);
  free(s->rank_kind);
  free(s->rank_kind_path);
  free(s->rank_overlap);
  free(s->op_count);
  free(s->op_time);
  free(s->op_path);
  free(s->op_flops);
  memset(s, 0, sizeof *s);
}
