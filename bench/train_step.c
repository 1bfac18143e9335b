/* Times training steps of eellm on random tokens: every step is one submission
 * (zero gradients, the micro-batches' forward and backward, clipping and AdamW)
 * and one wait, as in `eellm train`. Before StarPU starts it measures the
 * machine's peak for MFU, alone: single-threaded cblas_sgemm on every core at
 * once (sgemm_gflops, the best of a few rounds).
 *
 *   bench_train_step MODEL.txtpb BATCH SEQ STEPS [WARMUP]   -> one line of key=value
 *
 * WARMUP untimed steps (default 1) come first: they warm caches and calibrate the perf
 * models (with GPUs, StarPU runs each codelet on each kind of worker until it has
 * STARPU_CALIBRATE_MINIMUM measurements). EELLM_BENCH_BLAS_THREADS=N gives OpenBLAS N
 * threads inside every task once the runtime has started (which sets 1): with STARPU_NCPU=1,
 * one worker whose products use every core, as PyTorch's do. flops_per_token (forward and backward:
 * 3x the forward, causal attention counted once per key seen) lets the caller
 * put any peer's tokens/s against one peak. */
#include <cblas.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <eellm.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One 1024^3 product takes about 20 ms on one core: 25 of them time ~0.5 s a round. */
enum { GEMM_N = 1024, GEMM_WARMUP = 3, GEMM_REPS = 25, GEMM_ROUNDS = 3, MAX_THREADS = 256 };

struct gemm_probe {
  pthread_barrier_t start, stop;
  int rounds;
  double *seconds; /* [rounds]: when the last thread finished, from the common start */
  double t0;
};

/* Allocates and warms up outside the timing; then each round starts at a barrier, and the
 * round's time is the slowest thread's (all cores busy at once, as in training). */
static void *gemm_worker(void *arg) {
  struct gemm_probe *p = arg;
  size_t n = GEMM_N;
  float *a = malloc(n * n * sizeof *a), *b = malloc(n * n * sizeof *b), *c = malloc(n * n * sizeof *c);
  if (!a || !b || !c) abort();
  for (size_t i = 0; i < n * n; i++) a[i] = b[i] = 1.0f / (1 + i % 7), c[i] = 0;
  for (int r = 0; r < GEMM_WARMUP; r++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
  for (int round = 0; round < p->rounds; round++) {
    if (pthread_barrier_wait(&p->start) == PTHREAD_BARRIER_SERIAL_THREAD) p->t0 = now_s();
    pthread_barrier_wait(&p->start); /* t0 is set before anyone starts */
    for (int r = 0; r < GEMM_REPS; r++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    if (pthread_barrier_wait(&p->stop) == PTHREAD_BARRIER_SERIAL_THREAD)
      p->seconds[round] = now_s() - p->t0;
  }
  free(a);
  free(b);
  free(c);
  return NULL;
}

/* The best FLOP/s over `rounds` rounds of single-threaded sgemm on `threads` threads at once. */
static double sgemm_peak(int threads, int rounds) {
  openblas_set_num_threads(1);
  struct gemm_probe p = {.rounds = rounds, .seconds = calloc(rounds, sizeof(double))};
  pthread_barrier_init(&p.start, NULL, threads);
  pthread_barrier_init(&p.stop, NULL, threads);
  pthread_t t[MAX_THREADS];
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, gemm_worker, &p);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  double best = 0;
  for (int r = 0; r < rounds; r++) {
    double rate = threads * GEMM_REPS * 2.0 * GEMM_N * GEMM_N * GEMM_N / p.seconds[r];
    best = rate > best ? rate : best;
  }
  pthread_barrier_destroy(&p.start);
  pthread_barrier_destroy(&p.stop);
  free(p.seconds);
  return best;
}

int main(int argc, char **argv) {
  eellm_blas_fit_cpu(argv);
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s MODEL.txtpb BATCH SEQ STEPS [WARMUP]\n", argv[0]);
    return 2;
  }
  unsigned batch = atoi(argv[2]), seq = atoi(argv[3]), steps = atoi(argv[4]);
  unsigned warmup = argc == 6 ? atoi(argv[5]) : 1;
  char err[512];
  Eellm__Model *spec = eellm_model_spec_load(argv[1], err, sizeof err);
  if (!spec) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (cores > MAX_THREADS) cores = MAX_THREADS;
  double peak = sgemm_peak(cores, GEMM_ROUNDS);
  char start_err[512];
  if (eellm_runtime_start(start_err, sizeof start_err) != 0) {
    fprintf(stderr, "%s\n", start_err);
    return 1;
  }
  const char *blas_threads = getenv("EELLM_BENCH_BLAS_THREADS");
  if (blas_threads) openblas_set_num_threads(atoi(blas_threads));
  eellm_model *m = eellm_model_create(spec, batch, seq, err, sizeof err);
  if (!m) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  eellm_model_init(m, 1);
  size_t n = (size_t)batch * seq;
  int32_t *tokens = malloc((n + 1) * sizeof *tokens);
  srand(3);
  for (size_t i = 0; i <= n; i++) tokens[i] = rand() % spec->vocab_size;
  Eellm__AdamW opt = EELLM__ADAM_W__INIT;
  struct eellm_batch b = {tokens, tokens + 1, NULL};
  double t0 = 0;
  for (unsigned step = 0; step < warmup + steps; step++) {
    if (step == warmup) t0 = now_s();
    eellm_model_submit_zero_grads(m);
    if (eellm_model_submit_forward_backward(m, &b, NULL, 1.0f, err, sizeof err) != 0) return 1;
    eellm_model_submit_optimizer(m, &opt, step + 1, 1e-4);
    eellm_model_wait(m);
  }
  double seconds = (now_s() - t0) / steps;
  /* Costs are per token at the full context; the bench runs at seq. */
  double fwd = spec->n_layers * eellm_model_spec_layer_flops(spec, seq) +
               2.0 * spec->d_model * spec->vocab_size;
  for (unsigned k = 0; k < spec->n_exits; k++) fwd += eellm_model_spec_exit_flops(spec, k, seq);
  double flops = 3 * fwd * n / seconds;
  printf(
      "tokens_per_s=%.1f step_ms=%.2f flops_per_token=%.0f model_gflops=%.2f sgemm_gflops=%.2f "
      "mfu=%.4f cores=%d\n",
      n / seconds, seconds * 1e3, 3 * fwd, flops / 1e9, peak / 1e9, flops / peak, cores);
  free(tokens);
  eellm_model_destroy(m);
  eellm_runtime_stop();
  eellm_model_spec_free(spec);
  return 0;
}
