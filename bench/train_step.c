/* Times training steps of eellm on random tokens: every step is one submission
 * (zero gradients, the micro-batches' forward and backward, clipping and AdamW)
 * and one wait, as in `eellm train`. Also measures cblas_sgemm's rate on all
 * cores (one 1024^3 product per worker thread at once), the peak for MFU.
 *
 *   bench_train_step MODEL.txtpb BATCH SEQ STEPS [WARMUP]   -> one line of key=value
 *
 * WARMUP untimed steps (default 1) come first: they warm caches and calibrate the perf
 * models (with GPUs, StarPU runs each codelet on each kind of worker until it has
 * STARPU_CALIBRATE_MINIMUM measurements). */
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

enum { GEMM_N = 1024, GEMM_REPS = 4 };

static void *gemm_worker(void *arg) {
  (void)arg;
  size_t n = GEMM_N;
  float *a = malloc(n * n * sizeof *a), *b = malloc(n * n * sizeof *b), *c = malloc(n * n * sizeof *c);
  for (size_t i = 0; i < n * n; i++) a[i] = b[i] = 1.0f / (1 + i % 7), c[i] = 0;
  for (int r = 0; r < GEMM_REPS; r++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
  free(a);
  free(b);
  free(c);
  return NULL;
}

/* FLOP/s of single-threaded sgemm running on `threads` threads at once. */
static double sgemm_rate(int threads) {
  openblas_set_num_threads(1);
  pthread_t t[64];
  double t0 = now_s();
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, gemm_worker, NULL);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  return threads * GEMM_REPS * 2.0 * GEMM_N * GEMM_N * GEMM_N / (now_s() - t0);
}

int main(int argc, char **argv) {
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
  sgemm_rate(cores); /* warm-up */
  double peak = sgemm_rate(cores);
  char start_err[512];
  if (eellm_runtime_start(start_err, sizeof start_err) != 0) {
    fprintf(stderr, "%s\n", start_err);
    return 1;
  }
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
  struct eellm_model_spec_costs c;
  eellm_model_spec_costs(spec, &c);
  /* Costs are per token at the full context; the bench runs at seq. */
  double fwd = spec->n_layers * eellm_model_spec_layer_flops(spec, seq) +
               2.0 * spec->d_model * spec->vocab_size;
  for (unsigned k = 0; k < spec->n_exits; k++) fwd += eellm_model_spec_exit_flops(spec, k, seq);
  double flops = 3 * fwd * n / seconds;
  printf("tokens_per_s=%.1f step_ms=%.2f model_gflops=%.2f sgemm_gflops=%.2f mfu=%.4f cores=%d\n",
         n / seconds, seconds * 1e3, flops / 1e9, peak / 1e9, flops / peak, cores);
  free(tokens);
  eellm_model_destroy(m);
  eellm_runtime_stop();
  eellm_model_spec_free(spec);
  return 0;
}
