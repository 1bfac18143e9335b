/* Traces: real StarPU tasks recorded through eellm_submit and read back
 * (fields, order, times, FLOPs, ranks' files, Paje), the FLOPs that the products'
 * and attention's wrappers count, and the figures of a small hand-made two-rank
 * trace against values worked out by hand. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codelets/codelets.h"
#include "runtime/engine/trace.h"
#include "eellm/trace.h"
#include "testutil.h"

static const char *dir;

static int near(double got, double want) { return fabs(got - want) < 1e-6; }

static size_t count_lines(const char *path, const char *prefix) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[512];
  size_t n = 0;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, prefix, strlen(prefix)) == 0) n++;
  fclose(f);
  return n;
}

/* ---- recording real tasks -------------------------------------------------- */

enum { N_TASKS = 24 };

/* The info of task i: every kind, micro-batches, layers and exits; FLOPs on every third. */
static struct eellm_task_info info_of(int i) {
  struct eellm_task_info info = {.priority = i % 3, .kind = (enum eellm_task_kind)(i % EELLM_N_KINDS),
                                 .micro = i % 4 - 1, .layer = i % 5 == 4 ? 1000 + i % 2 : i % 5 - 1};
  info.flops = i % 3 == 0 ? 1e9 * i + 7 : 0;
  return info;
}

/* Zero tasks on one handle run one after the other, in submission order. */
static void submit_tasks(starpu_data_handle_t h, int from, int to) {
  for (int i = from; i < to; i++) {
    struct eellm_task_info info = info_of(i);
    eellm_insert_zero(h, &info);
  }
}

static void check_recorded(const struct eellm_trace *t, int rank) {
  tu_ok(t->n_tasks == N_TASKS, "every submitted task read back");
  int fields = 1, times = 1;
  for (size_t i = 0; i < t->n_tasks && i < N_TASKS; i++) {
    const struct eellm_trace_task *k = &t->tasks[i];
    struct eellm_task_info want = info_of((int)i);
    int exit = want.layer >= 1000 ? want.layer - 1000 : -1;
    int layer = want.layer >= 1000 ? -1 : want.layer;
    int step = i < N_TASKS - 4 ? 7 : -1;
    fields &= k->kind == (int)want.kind && k->micro == want.micro && k->layer == layer &&
              k->exit == exit && k->step == step && strcmp(t->names[k->name], "zero") == 0 &&
              t->rows[k->row].rank == rank && k->flops == want.flops;
    times &= k->submit >= 0 && k->submit <= k->start && k->start <= k->end &&
             (i == 0 || k->start >= t->tasks[i - 1].end);
  }
  tu_ok(fields, "kind, micro-batch, layer, exit, step, name, rank and FLOPs of each task");
  tu_ok(times, "0 <= submit <= start <= end, tasks one after the other");
}

static void test_recording(void) {
  float x[256] = {0};
  starpu_data_handle_t h = tu_vector(x, 256);
  char err[512], path[256], rank_path[256];
  snprintf(path, sizeof path, "%s/t.json", dir);
  tu_ok(eellm_trace_task_arg(&eellm_task_default) == NULL, "no record while no trace records");

  tu_ok(eellm_trace_start(path, EELLM_TRACE_CHROME, 0, 1, err, sizeof err) == 0, "trace starts");
  tu_ok(eellm_trace_start(path, EELLM_TRACE_CHROME, 0, 1, err, sizeof err) != 0,
        "a second trace is refused");
  eellm_trace_set_step(7);
  submit_tasks(h, 0, N_TASKS - 4);
  eellm_trace_set_step(-1);
  submit_tasks(h, N_TASKS - 4, N_TASKS);
  tu_ok(eellm_trace_stop(err, sizeof err) == N_TASKS, "stop writes every task");
  tu_ok(eellm_trace_stop(err, sizeof err) == 0, "stop without a trace does nothing");
  submit_tasks(h, 0, 2); /* not recorded */

  struct eellm_trace t;
  const char *files[] = {path};
  if (tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) == 0, "trace reads back")) {
    check_recorded(&t, 0);
    eellm_trace_free(&t);
  }

  /* Rank 1 of 2, shifted by a clock offset of 1 s. */
  tu_ok(eellm_trace_start(path, EELLM_TRACE_CHROME, 1, 2, err, sizeof err) == 0, "rank 1 starts");
  eellm_trace_set_clock_offset(1e6);
  eellm_trace_set_step(7);
  submit_tasks(h, 0, N_TASKS - 4);
  eellm_trace_set_step(-1);
  submit_tasks(h, N_TASKS - 4, N_TASKS);
  tu_ok(eellm_trace_stop(err, sizeof err) == N_TASKS, "rank 1 writes every task");
  eellm_trace_rank_path(path, 1, 2, rank_path, sizeof rank_path);
  tu_ok(strstr(rank_path, "/t.rank1.json") != NULL, "rank 1 writes t.rank1.json");
  files[0] = rank_path;
  if (tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) == 0, "rank 1's trace reads back")) {
    check_recorded(&t, 1);
    tu_ok(t.tasks[0].start >= 1e6, "the clock offset is added");
    eellm_trace_free(&t);
  }

  snprintf(path, sizeof path, "%s/t.paje", dir);
  tu_ok(eellm_trace_start(path, EELLM_TRACE_PAJE, 0, 1, err, sizeof err) == 0, "paje starts");
  submit_tasks(h, 0, N_TASKS);
  tu_ok(eellm_trace_stop(err, sizeof err) == N_TASKS, "paje writes every task");
  tu_ok(count_lines(path, "5 ") == N_TASKS && count_lines(path, "6 ") == N_TASKS,
        "paje: one push and one pop per task");
  tu_ok(count_lines(path, "%EventDef") == 7, "paje: seven event definitions");

  tu_ok(eellm_trace_start("/proc/eellm/t.json", EELLM_TRACE_CHROME, 0, 1, err, sizeof err) != 0 &&
            strstr(err, "/proc/eellm/t.json") != NULL,
        "an unwritable path is refused at start, named");
}

/* ---- FLOPs of the products and attention ----------------------------------- */

/* The FLOPs recorded for each op of a trace that ran one linear_fwd (x [3, 4] @ w [4, 5]),
 * its backward (dx and dW: two tasks), and attention forward and backward (2 sequences of
 * 3 rows, 2 heads of 4 columns: 6 causal pairs a head). */
static void test_counted_flops(void) {
  float x[12] = {0}, w[20] = {0}, y[15] = {0}, dx[12], dw[20] = {0}, dy[15] = {0};
  float qkv[6 * 24] = {0}, out[6 * 8], lse[6 * 2], dout[6 * 8] = {0}, dqkv[6 * 24];
  char err[512], path[256];
  snprintf(path, sizeof path, "%s/flops.json", dir);
  tu_ok(eellm_trace_start(path, EELLM_TRACE_CHROME, 0, 1, err, sizeof err) == 0, "trace starts");
  eellm_trace_set_step(1);
  starpu_data_handle_t hx = tu_matrix(x, 3, 4), hw = tu_matrix(w, 4, 5), hdy = tu_matrix(dy, 3, 5);
  eellm_insert_linear_fwd(hx, hw, NULL, NULL, tu_matrix(y, 3, 5), 0, &eellm_task_default);
  eellm_insert_linear_bwd(hx, hw, hdy, tu_matrix(dx, 3, 4), tu_matrix(dw, 4, 5), NULL, 0, 0,
                          &eellm_task_default);
  starpu_data_handle_t hqkv = tu_matrix(qkv, 6, 24), hlse = tu_matrix(lse, 6, 2);
  eellm_insert_attention_fwd(hqkv, tu_matrix(out, 6, 8), hlse, 3, 2, 0, 10000, &eellm_task_default);
  eellm_insert_attention_bwd(hqkv, hlse, tu_matrix(dout, 6, 8), tu_matrix(dqkv, 6, 24), 3, 2, 0,
                             10000, 0, &eellm_task_default);
  tu_sync_all();
  tu_ok(eellm_trace_stop(err, sizeof err) == 5, "five tasks written");
  struct eellm_trace t;
  struct eellm_trace_stats s;
  const char *files[] = {path};
  if (!tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) == 0, "trace reads back")) return;
  if (tu_ok(eellm_trace_analyze(&t, &s) == 0, "figures computed")) {
    static const struct {
      const char *op;
      double flops;
    } want[] = {{"linear_fwd", 2 * 3 * 4 * 5},
                {"linear_bwd", 2 * 3 * 4 * 5},
                {"linear_dw", 2 * 3 * 4 * 5},
                {"attention_fwd", 2 * 2 * 6 * 2 * 2 * 4},
                {"attention_bwd", 2 * 2 * 2 * 6 * 2 * 2 * 4}};
    int ok = 1;
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++)
      for (int i = 0; i < t.n_names; i++)
        if (strcmp(t.names[i], want[k].op) == 0) ok &= near(s.op_flops[i], want[k].flops);
    tu_ok(ok && t.n_names == 5, "2 n k m a product; attention 2 hd a product of a causal pair");
    eellm_trace_stats_free(&s);
  }
  eellm_trace_free(&t);
}

/* ---- figures of a hand-made trace ------------------------------------------ */

/* Rank 0 (workers 0 and 1) and rank 1 (worker 0), times in microseconds.
 * Step 1: w0 A fwd [0,10] B fwd [20,30] C bwd [60,80]; w1 E exit [12,18],
 * L exit-0 loss [31,35]; rank 1 D fwd [32,50]. Step 2: w0 F fwd [200,210];
 * rank 1 G bwd [212,220]. Outside the steps: w0 V fwd [100,105]. */
static const char rank0_json[] =
    "{\"traceEvents\": [\n"
    "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": 0, \"tid\": 1, \"args\": {\"name\": \"CPU 1\"}},\n"
    "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": 0, \"tid\": 0, \"args\": {\"name\": \"CPU 0\"}},\n"
    "{\"ph\": \"X\", \"name\": \"C\", \"pid\": 0, \"tid\": 0, \"ts\": 60, \"dur\": 20, \"args\": {\"kind\": \"backward\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"A\", \"pid\": 0, \"tid\": 0, \"ts\": 0, \"dur\": 10, \"args\": {\"kind\": \"forward\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"B\", \"pid\": 0, \"tid\": 0, \"ts\": 20, \"dur\": 10, \"args\": {\"kind\": \"forward\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"E\", \"pid\": 0, \"tid\": 1, \"ts\": 12, \"dur\": 6, \"args\": {\"kind\": \"exit\", \"step\": 1, \"exit\": 0}},\n"
    "{\"ph\": \"X\", \"name\": \"L\", \"pid\": 0, \"tid\": 1, \"ts\": 31, \"dur\": 4, \"args\": {\"kind\": \"loss\", \"step\": 1, \"exit\": 0}},\n"
    "{\"ph\": \"X\", \"name\": \"F\", \"pid\": 0, \"tid\": 0, \"ts\": 200, \"dur\": 10, \"args\": {\"kind\": \"forward\", \"step\": 2}},\n"
    "{\"ph\": \"X\", \"name\": \"V\", \"pid\": 0, \"tid\": 0, \"ts\": 100, \"dur\": 5, \"args\": {\"kind\": \"forward\", \"step\": -1}}\n"
    "]}\n";
static const char rank1_json[] =
    "{\"traceEvents\": [\n"
    "{\"ph\": \"M\", \"name\": \"thread_name\", \"pid\": 1, \"tid\": 0, \"args\": {\"name\": \"CPU 0\"}},\n"
    "{\"ph\": \"X\", \"name\": \"D\", \"pid\": 1, \"tid\": 0, \"ts\": 32, \"dur\": 18, \"args\": {\"kind\": \"forward\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"G\", \"pid\": 1, \"tid\": 0, \"ts\": 212, \"dur\": 8, \"args\": {\"kind\": \"backward\", \"step\": 2}}\n"
    "]}\n";

static int write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fputs(text, f);
  return fclose(f);
}

/* The names of the tasks on the path, in start order. */
static void path_names(const struct eellm_trace *t, const struct eellm_trace_stats *s, char *out) {
  for (size_t i = 0; i < t->n_tasks; i++)
    if (s->on_path[i]) *out++ = t->names[t->tasks[i].name][0];
  *out = 0;
}

static void check_figures(const struct eellm_trace *t, const struct eellm_trace_stats *s) {
  tu_ok(t->n_rows == 3 && t->rows[0].rank == 0 && t->rows[0].worker == 0 &&
            t->rows[1].worker == 1 && t->rows[2].rank == 1 && strcmp(t->rows[1].name, "CPU 1") == 0,
        "rows sorted by rank, then worker, with their names");
  tu_ok(s->n_steps == 2 && s->outside == 1, "two steps; one task outside");
  tu_ok(near(s->window, 100), "windows: 80 + 20 us");
  tu_ok(near(s->busy[0], 50) && near(s->busy[1], 10) && near(s->busy[2], 26), "busy per worker");
  tu_ok(near(s->bubble[0], 40) && near(s->bubble[1], 13) && near(s->bubble[2], 0),
        "bubble per worker");
  tu_ok(s->kind_count[EELLM_KIND_FORWARD] == 4 && near(s->kind_time[EELLM_KIND_FORWARD], 48) &&
            s->kind_count[EELLM_KIND_BACKWARD] == 2 && near(s->kind_time[EELLM_KIND_BACKWARD], 28) &&
            near(s->kind_time[EELLM_KIND_EXIT], 6) && near(s->kind_time[EELLM_KIND_LOSS], 4),
        "time per kind");
  const struct eellm_trace_step *one = &s->steps[0], *two = &s->steps[1];
  tu_ok(one->step == 1 && one->path_tasks == 5 && near(one->path_busy, 64) &&
            near(one->path_kind[EELLM_KIND_FORWARD], 38) && two->path_tasks == 2 &&
            near(two->path_busy, 18),
        "critical paths: C<-D<-B<-E<-A and G<-F");
  char names[16];
  path_names(t, s, names);
  tu_ok(strcmp(names, "AEBDCFG") == 0, "the path's tasks");
  tu_ok(near(s->exit_work, 10) && near(s->exit_on_path, 6), "exit work 10 us, 6 on the path");
}

static void test_figures(void) {
  char err[512], p0[256], p1[256];
  snprintf(p0, sizeof p0, "%s/rank0.json", dir);
  snprintf(p1, sizeof p1, "%s/rank1.json", dir);
  tu_ok(write_text(p0, rank0_json) == 0 && write_text(p1, rank1_json) == 0, "hand-made trace");
  const char *files[] = {p1, p0}; /* rank order comes from the files' contents */
  struct eellm_trace t;
  struct eellm_trace_stats s;
  if (!tu_ok(eellm_trace_load(&t, files, 2, err, sizeof err) == 0, "hand-made trace reads")) return;
  if (tu_ok(eellm_trace_analyze(&t, &s) == 0, "figures computed")) {
    check_figures(&t, &s);
    eellm_trace_stats_free(&s);
  }
  eellm_trace_free(&t);
  files[0] = "/nonexistent/t.json";
  tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) != 0 && strstr(err, "/nonexistent/t.json"),
        "a missing file is named");
  files[0] = p0;
  write_text(p0, "{\"other\": 1}");
  tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) != 0 && strstr(err, "traceEvents"),
        "a JSON file that is not a trace is refused");
}

/* Per rank: rank 0 runs collective K [0,10] on worker 0 while worker 1 runs X fwd [4,8] and
 * Y bwd [9,15] (5 us of K overlapped); rank 1 runs collective K2 [2,11], then Z fwd [12,20].
 * The path is Z <- K2. */
static const char collectives_json[] =
    "{\"traceEvents\": [\n"
    "{\"ph\": \"X\", \"name\": \"K\", \"pid\": 0, \"tid\": 0, \"ts\": 0, \"dur\": 10, \"args\": "
    "{\"kind\": \"collective\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"X\", \"pid\": 0, \"tid\": 1, \"ts\": 4, \"dur\": 4, \"args\": "
    "{\"kind\": \"forward\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"Y\", \"pid\": 0, \"tid\": 1, \"ts\": 9, \"dur\": 6, \"args\": "
    "{\"kind\": \"backward\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"K2\", \"pid\": 1, \"tid\": 0, \"ts\": 2, \"dur\": 9, \"args\": "
    "{\"kind\": \"collective\", \"step\": 1}},\n"
    "{\"ph\": \"X\", \"name\": \"Z\", \"pid\": 1, \"tid\": 0, \"ts\": 12, \"dur\": 8, \"args\": "
    "{\"kind\": \"forward\", \"step\": 1}}\n"
    "]}\n";

static double rank_kind(const double *figures, int rank, int kind) {
  return figures[rank * EELLM_TRACE_N_KINDS + kind];
}

static void test_collectives(void) {
  char err[512], path[256];
  snprintf(path, sizeof path, "%s/collectives.json", dir);
  const char *files[] = {path};
  struct eellm_trace t;
  struct eellm_trace_stats s;
  tu_ok(write_text(path, collectives_json) == 0, "hand-made trace of collectives");
  if (!tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) == 0, "it reads")) return;
  if (tu_ok(eellm_trace_analyze(&t, &s) == 0, "figures computed")) {
    const int coll = EELLM_TRACE_COLLECTIVE, fwd = EELLM_TRACE_FORWARD;
    tu_ok(s.n_ranks == 2 && near(rank_kind(s.rank_kind, 0, coll), 10) &&
              near(rank_kind(s.rank_kind, 0, fwd), 4) &&
              near(rank_kind(s.rank_kind, 0, EELLM_TRACE_BACKWARD), 6) &&
              near(rank_kind(s.rank_kind, 1, coll), 9) && near(rank_kind(s.rank_kind, 1, fwd), 8),
          "time per rank and kind");
    tu_ok(near(rank_kind(s.rank_kind_path, 1, coll), 9) &&
              near(rank_kind(s.rank_kind_path, 1, fwd), 8) &&
              near(rank_kind(s.rank_kind_path, 0, coll), 0),
          "rank 1's collective and forward on the path, nothing of rank 0");
    tu_ok(near(s.rank_overlap[0], 5) && near(s.rank_overlap[1], 0),
          "rank 0's collective overlapped 5 us by its other worker, rank 1's not at all");
    eellm_trace_stats_free(&s);
  }
  eellm_trace_free(&t);
  write_text(path, "{\"traceEvents\": [{\"ph\": \"X\", \"pid\": -1, \"tid\": 0}]}");
  tu_ok(eellm_trace_load(&t, files, 1, err, sizeof err) != 0 && strstr(err, "pid -1 is not a rank"),
        "a negative pid is refused");
}

int main(void) {
  dir = tu_tempdir();
  tu_start();
  test_recording();
  test_counted_flops();
  test_figures();
  test_collectives();
  return tu_finish();
}
