/* eellm trace: figures and an HTML report from task traces (eellm train --trace). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include <eellm/outfile.h>
#include <eellm/trace.h>

static const char trace_usage[] =
    "usage: eellm trace summary TRACE.json [TRACE.json ...]\n"
    "       eellm trace report TRACE.json [TRACE.json ...] -o REPORT.html\n"
    "\n"
    "Reads the Chrome traces 'eellm train --trace' writes (several files: the ranks\n"
    "of one run) and gives, over the training steps: each worker's busy, idle and\n"
    "bubble fractions, the time per task kind and per op (task name, with its time\n"
    "on the critical path), per rank (with the collectives' time on the critical\n"
    "path and overlapped by other tasks of the rank), each step's critical path\n"
    "and the share of exit work hidden off it.\n"
    "\n"
    "  summary   prints the figures as tables\n"
    "  report    writes one self-contained HTML file: a Gantt chart per rank and\n"
    "            worker (wheel zooms, drag pans, hover for details) and the figures\n"
    "\n"
    "busy: time a worker ran tasks, over the steps' windows (first start to last\n"
    "end of a step's tasks on any worker); idle = 1 - busy. bubble: the part of\n"
    "idle between a worker's first and last task of a step. Critical path: from\n"
    "the step's last task back, each time to the task that ended latest before\n"
    "the current one started (any worker). Hidden exit work: exit heads and their\n"
    "losses off that path: they did not lengthen the step.\n";

static double ms(double us) { return us / 1000; }

static double share(double part, double whole) { return whole > 0 ? 100 * part / whole : 0; }

static void print_workers(const struct eellm_trace *t, const struct eellm_trace_stats *s) {
  printf("\n%-20s %8s %8s %8s %10s\n", "worker", "busy", "idle", "bubble", "busy ms");
  for (int r = 0; r < t->n_rows; r++) {
    char label[96];
    snprintf(label, sizeof label, "rank %d %s", t->rows[r].rank, t->rows[r].name);
    printf("%-20s %7.1f%% %7.1f%% %7.1f%% %10.2f\n", label, share(s->busy[r], s->window),
           share(s->window - s->busy[r], s->window), share(s->bubble[r], s->window),
           ms(s->busy[r]));
  }
}

static void print_kinds(const struct eellm_trace_stats *s) {
  double total = 0;
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++) total += s->kind_time[k];
  printf("\n%-12s %7s %10s %7s %9s\n", "kind", "tasks", "time ms", "share", "mean us");
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    if (s->kind_count[k])
      printf("%-12s %7zu %10.2f %6.1f%% %9.1f\n", eellm_trace_kind_name(k), s->kind_count[k],
             ms(s->kind_time[k]), share(s->kind_time[k], total),
             s->kind_time[k] / s->kind_count[k]);
}

/* Each op's time, the longest first, with its share of all task time and of the path's. */
static void print_ops(const struct eellm_trace *t, const struct eellm_trace_stats *s) {
  int *order = malloc((size_t)(t->n_names + 1) * sizeof *order);
  if (!order) return;
  double total = 0, path = 0;
  for (int i = 0; i < t->n_names; i++) {
    total += s->op_time[i], path += s->op_path[i];
    int j = i; /* insertion sort, by time descending: a trace has a few dozen ops */
    for (; j > 0 && s->op_time[order[j - 1]] < s->op_time[i]; j--) order[j] = order[j - 1];
    order[j] = i;
  }
  printf("\n%-20s %7s %10s %7s %9s %9s %7s %8s\n", "op", "tasks", "time ms", "share", "mean us",
         "path ms", "of path", "GFLOP/s");
  for (int k = 0; k < t->n_names; k++) {
    int i = order[k];
    if (!s->op_count[i]) continue;
    printf("%-20s %7zu %10.2f %6.1f%% %9.1f %9.2f %6.1f%%", t->names[i], s->op_count[i],
           ms(s->op_time[i]), share(s->op_time[i], total), s->op_time[i] / s->op_count[i],
           ms(s->op_path[i]), share(s->op_path[i], path));
    /* model FLOPs over task time: the ops' rate while they run */
    if (s->op_flops[i] > 0 && s->op_time[i] > 0)
      printf(" %8.1f\n", s->op_flops[i] / s->op_time[i] / 1e3);
    else
      printf(" %8s\n", "-");
  }
  free(order);
}

/* Each rank's time per kind (collectives their own column), its collectives' time on the
 * critical path and the part of it overlapped by other tasks on the rank. */
static void print_ranks(const struct eellm_trace_stats *s) {
  printf("\n%-8s", "rank");
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    if (s->kind_count[k]) printf(" %10s", eellm_trace_kind_name(k));
  printf(" %16s %11s   (ms)\n", "collective path", "overlapped");
  for (int r = 0; r < s->n_ranks; r++) {
    const double *time = s->rank_kind + (size_t)r * EELLM_TRACE_N_KINDS;
    printf("rank %-3d", r);
    for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
      if (s->kind_count[k]) printf(" %10.2f", ms(time[k]));
    printf(" %16.2f %11.2f\n",
           ms(s->rank_kind_path[(size_t)r * EELLM_TRACE_N_KINDS + EELLM_TRACE_COLLECTIVE]),
           ms(s->rank_overlap[r]));
  }
}

static void print_steps(const struct eellm_trace_stats *s) {
  printf("\n%-6s %9s %6s %11s %10s %10s %9s %9s\n", "step", "wall ms", "tasks", "path tasks",
         "path busy", "path wait", "exit ms", "exit path");
  for (int i = 0; i < s->n_steps; i++) {
    const struct eellm_trace_step *st = &s->steps[i];
    double wall = st->end - st->start;
    printf("%-6d %9.2f %6zu %11zu %10.2f %10.2f %9.2f %9.2f\n", st->step, ms(wall), st->n_tasks,
           st->path_tasks, ms(st->path_busy), ms(wall - st->path_busy), ms(st->exit_work),
           ms(st->exit_on_path));
  }
}

/* The path's composition over all steps. */
static void print_path(const struct eellm_trace_stats *s) {
  double kind[EELLM_TRACE_N_KINDS] = {0}, busy = 0;
  for (int i = 0; i < s->n_steps; i++) {
    busy += s->steps[i].path_busy;
    for (int k = 0; k < EELLM_TRACE_N_KINDS; k++) kind[k] += s->steps[i].path_kind[k];
  }
  printf("\ncritical path: %.2f ms of tasks (%.1f%% of the steps' time), %.2f ms of waits;",
         ms(busy), share(busy, s->window), ms(s->window - busy));
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    if (kind[k] > 0) printf(" %s %.1f%%", eellm_trace_kind_name(k), share(kind[k], busy));
  printf("\n");
  double hidden = s->exit_work - s->exit_on_path;
  printf("exit work: %.2f ms; hidden (off the critical path) %.2f ms = %.1f%%; on the path "
         "%.2f ms\n",
         ms(s->exit_work), ms(hidden), share(hidden, s->exit_work), ms(s->exit_on_path));
}

static void print_summary(const char *what, const struct eellm_trace *t,
                          const struct eellm_trace_stats *s) {
  int ranks = t->n_rows ? t->rows[t->n_rows - 1].rank + 1 : 0;
  printf("trace %s: %d rank%s, %d workers, %d steps, %zu tasks", what, ranks,
         ranks == 1 ? "" : "s", t->n_rows, s->n_steps, t->n_tasks);
  if (s->outside) printf(" (%zu outside the steps, not counted)", s->outside);
  printf("; steps' windows %.2f ms\n", ms(s->window));
  print_workers(t, s);
  print_kinds(s);
  print_ops(t, s);
  print_ranks(s);
  print_steps(s);
  print_path(s);
}

static int write_report(const char *path, const struct eellm_trace *t,
                        const struct eellm_trace_stats *s, const char *title) {
  char err[4200];
  struct eellm_outfile f;
  if (eellm_outfile_open(&f, path, err, sizeof err) != 0) {
    fprintf(stderr, "eellm trace: %s\n", err);
    return 2;
  }
  if (eellm_trace_write_html(f.fp, t, s, title) != 0) {
    fprintf(stderr, "eellm trace: %s: cannot write\n", path);
    eellm_outfile_abort(&f);
    return 1;
  }
  if (eellm_outfile_commit(&f, err, sizeof err) != 0) {
    fprintf(stderr, "eellm trace: %s\n", err);
    return 1;
  }
  printf("report %s: %zu tasks, %d steps\n", path, t->n_tasks, s->n_steps);
  return 0;
}

int cmd_trace(int argc, char **argv) {
  static const struct option options[] = {
      {"output", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *out = NULL;
  int opt;
  while ((opt = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
    switch (opt) {
      case 'o': out = optarg; break;
      case 'h': fputs(trace_usage, stdout); return 0;
      default: fputs(trace_usage, stderr); return 2;
    }
  }
  const char *sub = optind < argc ? argv[optind] : "";
  int summary = strcmp(sub, "summary") == 0, report = strcmp(sub, "report") == 0;
  int n_files = argc - optind - 1;
  if ((!summary && !report) || n_files < 1 || (report && !out) || (summary && out)) {
    fputs(trace_usage, stderr);
    return 2;
  }
  const char *const *files = (const char *const *)argv + optind + 1;
  char err[4200];
  struct eellm_trace t;
  if (eellm_trace_load(&t, files, n_files, err, sizeof err) != 0) {
    fprintf(stderr, "eellm trace: %s\n", err);
    return 2;
  }
  char what[4200]; /* names the trace in titles */
  snprintf(what, sizeof what, n_files > 1 ? "%s and %d more" : "%s", files[0], n_files - 1);
  struct eellm_trace_stats s;
  int status = 1;
  if (eellm_trace_analyze(&t, &s) != 0) {
    fprintf(stderr, "eellm trace: out of memory\n");
  } else {
    status = 0;
    if (summary) print_summary(what, &t, &s);
    else status = write_report(out, &t, &s, what);
    eellm_trace_stats_free(&s);
  }
  eellm_trace_free(&t);
  return status;
}
