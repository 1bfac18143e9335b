/* Times pipelined training steps: run under scripts/eellm-mpirun with one rank
 * per stage (one StarPU worker each). Each step is one submission of m
 * micro-batches' forward and backward plus the optimizer, and one wait. Per
 * stage it reports the step time, the idle fraction of its worker (from
 * StarPU's per-worker profiling) and the process's peak resident memory.
 *
 *   bench_pipeline_step MODEL.txtpb MICRO_BATCHES SEQS_PER_MICRO SEQ STEPS
 * prints, on rank 0, one line per stage: stage=S step_ms=... idle=... peak_rss_mb=... */
#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <eellm.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double seconds(struct timespec t) { return t.tv_sec + t.tv_nsec * 1e-9; }

/* Busy and total seconds of this process's workers since the previous call. */
static void worker_times(double *busy, double *total) {
  *busy = *total = 0;
  for (unsigned w = 0; w < starpu_worker_get_count(); w++) {
    struct starpu_profiling_worker_info info;
    starpu_profiling_worker_get_info((int)w, &info);
    *busy += seconds(info.executing_time);
    *total += seconds(info.total_time);
  }
}

int main(int argc, char **argv) {
  eellm_blas_fit_cpu(argv);
  if (argc != 6) {
    fprintf(stderr, "usage: %s MODEL.txtpb MICRO_BATCHES SEQS_PER_MICRO SEQ STEPS\n", argv[0]);
    return 2;
  }
  unsigned micro = atoi(argv[2]), batch = atoi(argv[3]), seq = atoi(argv[4]), steps = atoi(argv[5]);
  char err[512];
  Eellm__Model *spec = eellm_model_spec_load(argv[1], err, sizeof err);
  if (!spec) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  if (eellm_launched_by_mpirun() && eellm_mpi_init(err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  char start_err[512];
  if (eellm_runtime_start(start_err, sizeof start_err) != 0) {
    fprintf(stderr, "%s\n", start_err);
    return 1;
  }
  starpu_profiling_status_set(STARPU_PROFILING_ENABLE);
  eellm_model *m = eellm_model_create_pipelined(spec, batch, seq, (unsigned)eellm_nranks(), NULL,
                                                0, err, sizeof err);
  if (!m) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  eellm_model_init(m, 1);
  size_t n = (size_t)batch * seq;
  int32_t *tokens = malloc((micro * n + 1) * sizeof *tokens);
  srand(3);
  for (size_t i = 0; i <= micro * n; i++) tokens[i] = rand() % spec->vocab_size;
  Eellm__AdamW opt = EELLM__ADAM_W__INIT;
  double step_s = 0, busy_s = 0, total_s = 0;
  for (unsigned step = 0; step < steps + 2; step++) {
    double busy, total, t0 = now_s();
    worker_times(&busy, &total); /* resets the interval */
    eellm_model_submit_zero_grads(m);
    for (unsigned mi = 0; mi < micro; mi++) {
      struct eellm_batch b = {tokens + mi * n, tokens + mi * n + 1, NULL};
      if (eellm_model_submit_forward_backward(m, &b, NULL, 1.0f / micro, err, sizeof err) != 0)
        return 1;
    }
    eellm_model_submit_optimizer(m, &opt, step + 1, 1e-4);
    eellm_model_wait(m);
    worker_times(&busy, &total);
    if (step < 2) continue; /* warm-up: calibration, first allocations */
    step_s += now_s() - t0;
    busy_s += busy;
    total_s += total;
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  int ranks = eellm_nranks(), rank = eellm_rank();
  double *report = calloc(3 * ranks, sizeof *report);
  report[3 * rank] = step_s / steps;
  report[3 * rank + 1] = total_s > 0 ? 1 - busy_s / total_s : 0;
  report[3 * rank + 2] = usage.ru_maxrss / 1024.0;
  eellm_mpi_sum(report, 3 * ranks);
  for (int s = 0; rank == 0 && s < ranks; s++)
    printf("stage=%d step_ms=%.2f idle=%.4f peak_rss_mb=%.1f\n", s, 1e3 * report[3 * s],
           report[3 * s + 1], report[3 * s + 2]);
  free(report);
  free(tokens);
  eellm_model_destroy(m);
  eellm_runtime_stop();
  eellm_model_spec_free(spec);
  return 0;
}
