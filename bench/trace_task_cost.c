/* What tracing adds to each task: TASKS independent short tasks (zeroing 64
 * floats, round robin over 256 vectors) submitted through eellm_submit and
 * waited for, without and with a trace recording, alternately, ROUNDS times.
 * The fastest round of each mode is kept (the machine's load only adds time).
 * Writing the trace file at the end is timed apart.
 *
 * It submits single codelet tasks, below what the installed API offers (whole
 * micro-batches), so it links the internal archive (eellm_internal), not
 * libeellm.so.
 *
 *   bench_trace_task_cost TASKS ROUNDS   -> one line of key=value */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "codelets/codelets.h" /* internal: linked with the eellm_internal archive */
#include "eellm.h"
#include "eellm/trace.h"

enum { N_VECTORS = 256, VECTOR_LEN = 64 };

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void submit(starpu_data_handle_t *vectors, long tasks) {
  for (long i = 0; i < tasks; i++) eellm_insert_zero(vectors[i % N_VECTORS], NULL);
  starpu_task_wait_for_all();
}

int main(int argc, char **argv) {
  eellm_blas_fit_cpu(argv);
  if (argc != 3) {
    fprintf(stderr, "usage: %s TASKS ROUNDS\n", argv[0]);
    return 2;
  }
  long tasks = atol(argv[1]), rounds = atol(argv[2]);
  char start_err[512];
  if (eellm_runtime_start(start_err, sizeof start_err) != 0) {
    fprintf(stderr, "%s\n", start_err);
    return 1;
  }
  static float data[N_VECTORS][VECTOR_LEN];
  starpu_data_handle_t vectors[N_VECTORS];
  for (int i = 0; i < N_VECTORS; i++)
    starpu_vector_data_register(&vectors[i], STARPU_MAIN_RAM, (uintptr_t)data[i], VECTOR_LEN,
                                sizeof(float));
  char path[] = "/tmp/eellm-trace-cost-XXXXXX", err[512];
  int fd = mkstemp(path);
  if (fd < 0) return 1;
  close(fd);
  submit(vectors, tasks); /* warm-up: perf models, first-touch */
  double plain = 1e30, traced = 1e30, write = 1e30;
  for (long r = 0; r < rounds; r++) {
    double t0 = now_s();
    submit(vectors, tasks);
    double plain_round = now_s() - t0;
    if (eellm_trace_start(path, EELLM_TRACE_CHROME, 0, 1, err, sizeof err) != 0) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    double t1 = now_s();
    submit(vectors, tasks);
    double t2 = now_s();
    if (eellm_trace_stop(err, sizeof err) != tasks) {
      fprintf(stderr, "trace: %s\n", err);
      return 1;
    }
    double t3 = now_s();
    if (plain_round < plain) plain = plain_round;
    if (t2 - t1 < traced) traced = t2 - t1;
    if (t3 - t2 < write) write = t3 - t2;
  }
  unlink(path);
  for (int i = 0; i < N_VECTORS; i++) starpu_data_unregister(vectors[i]);
  printf("tasks=%ld workers=%u plain_us_per_task=%.3f traced_us_per_task=%.3f "
         "cost_us_per_task=%.3f write_us_per_task=%.3f\n",
         tasks, starpu_worker_get_count(), 1e6 * plain / tasks, 1e6 * traced / tasks,
         1e6 * (traced - plain) / tasks, 1e6 * write / tasks);
  eellm_runtime_stop();
  return 0;
}
