#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "eellm.h"
#include "runtime/engine/splitmix.h"

static int passed, failed;
static starpu_data_handle_t handles[4096];
static size_t n_handles;
static void *allocations[4096];
static size_t n_allocations;
static uint64_t rng_state = EELLM_SPLITMIX64_GAMMA;
static char tempdirs[16][32];
static size_t n_tempdirs;

const char *tu_tempdir(void) {
  if (n_tempdirs == sizeof tempdirs / sizeof tempdirs[0]) {
    fprintf(stderr, "testutil: too many temporary directories\n");
    exit(1);
  }
  char *dir = tempdirs[n_tempdirs];
  snprintf(dir, sizeof tempdirs[0], "/tmp/eellm-test-XXXXXX");
  if (!mkdtemp(dir)) {
    perror("testutil: mkdtemp");
    exit(1);
  }
  n_tempdirs++;
  return dir;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

void tu_start(void) {
  char err[512];
  if (eellm_runtime_start(err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
}

int tu_finish(void) {
  if (starpu_is_initialized()) { /* tests without tasks (test_placement) never start it */
    tu_sync_all();
    eellm_runtime_stop();
  }
  for (size_t i = 0; i < n_allocations; i++) free(allocations[i]);
  n_allocations = 0;
  for (size_t i = 0; i < n_tempdirs; i++) nftw(tempdirs[i], remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  n_tempdirs = 0;
  extern const char *__progname;
  printf("%s: %d passed, %d failed\n", __progname, passed, failed);
  return failed ? 1 : 0;
}

static starpu_data_handle_t track(starpu_data_handle_t h) {
  if (n_handles == sizeof handles / sizeof handles[0]) {
    fprintf(stderr, "testutil: too many handles\n");
    exit(1);
  }
  handles[n_handles++] = h;
  return h;
}

starpu_data_handle_t tu_matrix(float *data, size_t rows, size_t cols) {
  return tu_matrix_ld(data, rows, cols, cols);
}

starpu_data_handle_t tu_matrix_ld(float *data, size_t rows, size_t cols, size_t ld) {
  starpu_data_handle_t h;
  starpu_matrix_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, ld, cols, rows, sizeof(float));
  return track(h);
}

starpu_data_handle_t tu_matrix_u16(uint16_t *data, size_t rows, size_t cols) {
  starpu_data_handle_t h;
  starpu_matrix_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, cols, cols, rows,
                              sizeof(uint16_t));
  return track(h);
}

starpu_data_handle_t tu_vector(float *data, size_t n) {
  starpu_data_handle_t h;
  starpu_vector_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, n, sizeof(float));
  return track(h);
}

starpu_data_handle_t tu_vector_i32(int32_t *data, size_t n) {
  starpu_data_handle_t h;
  starpu_vector_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, n, sizeof(int32_t));
  return track(h);
}

starpu_data_handle_t tu_vector_f64(double *data, size_t n) {
  starpu_data_handle_t h;
  starpu_vector_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, n, sizeof(double));
  return track(h);
}

void tu_sync_all(void) {
  starpu_task_wait_for_all();
  for (size_t i = 0; i < n_handles; i++) starpu_data_unregister(handles[i]);
  n_handles = 0;
}

void tu_seed(uint64_t seed) { rng_state = seed * EELLM_SPLITMIX64_GAMMA + 1; }

double tu_uniform(double lo, double hi) {
  uint64_t z = eellm_splitmix64_next(&rng_state);
  return lo + (hi - lo) * (double)(z >> 11) / 9007199254740992.0;
}

void tu_fill(float *x, size_t n, double lo, double hi) {
  for (size_t i = 0; i < n; i++) x[i] = (float)tu_uniform(lo, hi);
}

static void *remember(void *p) {
  if (!p || n_allocations == sizeof allocations / sizeof allocations[0]) {
    fprintf(stderr, "testutil: allocation failed\n");
    exit(1);
  }
  allocations[n_allocations++] = p;
  return p;
}

float *tu_alloc(size_t n) { return remember(calloc(n ? n : 1, sizeof(float))); }
double *tu_alloc_f64(size_t n) { return remember(calloc(n ? n : 1, sizeof(double))); }

double *tu_to_f64(const float *x, size_t n) {
  double *d = tu_alloc_f64(n);
  for (size_t i = 0; i < n; i++) d[i] = x[i];
  return d;
}

/* ---- backends ---------------------------------------------------------------- */

struct backend {
  const char *name;
  uint32_t where;
};

/* cpu's results of the current case, in check order, for the other backends. */
struct cpu_result {
  char *what;
  float *got;
  size_t n;
};
static struct cpu_result *cpu_results;
static size_t n_cpu_results, next_cpu_result;
static int backend_index = -1; /* -1: outside tu_for_each_backend */
static const char *backend_label = "cpu";

const char *tu_backend_name(void) { return backend_label; }

/* "[cpu] " inside tu_for_each_backend, "" outside: for FAIL lines. */
static const char *tag(void) {
  static char text[32];
  if (backend_index < 0) return "";
  snprintf(text, sizeof text, "[%s] ", backend_label);
  return text;
}

static size_t list_backends(struct backend *b) {
  size_t n = 0;
  b[n++] = (struct backend){"cpu", STARPU_CPU};
  if (starpu_cuda_worker_get_count() > 0) b[n++] = (struct backend){"cuda", STARPU_CUDA};
  return n;
}

static void forget_cpu_results(void) {
  for (size_t i = 0; i < n_cpu_results; i++) {
    free(cpu_results[i].what);
    free(cpu_results[i].got);
  }
  free(cpu_results);
  cpu_results = NULL;
  n_cpu_results = next_cpu_result = 0;
}

void tu_for_each_backend(const char *what, const char *const *ops,
                         void (*run)(const struct eellm_task_info *info, void *ctx), void *ctx) {
  static int listed;
  struct backend backends[2];
  size_t n = list_backends(backends);
  if (!listed) {
    printf("backends:");
    for (size_t b = 0; b < n; b++) printf(" %s", backends[b].name);
    printf("\n");
    listed = 1;
  }
  uint64_t rng_start = rng_state;
  for (size_t b = 0; b < n; b++) {
    const char *missing = NULL;
    for (const char *const *op = ops; *op && !missing; op++)
      if (!(eellm_codelet_archs(*op) & backends[b].where)) missing = *op;
    printf("[%s] %s:", backends[b].name, what);
    for (const char *const *op = ops; *op; op++) printf(" %s", *op);
    if (missing) {
      printf(" (skipped: %s has no %s implementation)\n", missing, backends[b].name);
      continue;
    }
    printf("%s\n", b == 0 ? "" : " (and against cpu)");
    struct eellm_task_info info = eellm_task_default;
    info.where = backends[b].where;
    rng_state = rng_start;
    backend_index = (int)b;
    backend_label = backends[b].name;
    next_cpu_result = 0;
    run(&info, ctx);
  }
  backend_index = -1;
  backend_label = "cpu";
  forget_cpu_results();
}

/* On cpu inside the loop, keeps a copy of got; on another backend, compares got
 * with the copy cpu kept for the same check. */
static void against_cpu(const char *what, const float *got, size_t n, double rtol, double atol) {
  if (backend_index == 0) {
    struct cpu_result *grown = realloc(cpu_results, (n_cpu_results + 1) * sizeof *grown);
    float *copy = malloc((n ? n : 1) * sizeof *copy);
    char *label = strdup(what);
    if (!grown || !copy || !label) {
      fprintf(stderr, "testutil: out of memory\n");
      exit(1);
    }
    if (n) memcpy(copy, got, n * sizeof *copy);
    cpu_results = grown;
    cpu_results[n_cpu_results++] = (struct cpu_result){label, copy, n};
    return;
  }
  if (backend_index < 0) return;
  const struct cpu_result *c = next_cpu_result < n_cpu_results ? &cpu_results[next_cpu_result] : NULL;
  next_cpu_result++;
  if (!c || c->n != n || strcmp(c->what, what) != 0) {
    printf("FAIL [%s] %s: no matching cpu check to compare with\n", backend_label, what);
    failed++;
    return;
  }
  double worst = 0;
  size_t worst_i = 0;
  int ok = 1;
  for (size_t i = 0; i < n; i++) {
    double err = fabs((double)got[i] - c->got[i]);
    if (!(err <= atol + rtol * fabs(c->got[i]))) ok = 0;
    if (!(err <= worst)) {
      worst = err;
      worst_i = i;
    }
  }
  printf("  [%s vs cpu] %-52s max abs diff %.2e\n", backend_label, what, worst);
  if (!ok) {
    printf("FAIL [%s vs cpu] %s: element %zu got %.9g cpu %.9g (rtol %g atol %g)\n",
           backend_label, what, worst_i, (double)got[worst_i], (double)c->got[worst_i], rtol,
           atol);
    failed++;
  } else {
    passed++;
  }
}

int tu_check(const char *what, const float *got, const double *want, size_t n, double rtol,
             double atol) {
  against_cpu(what, got, n, rtol, atol);
  size_t worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < n; i++) {
    double err = fabs((double)got[i] - want[i]);
    double excess = err - (atol + rtol * fabs(want[i]));
    if (!isfinite(got[i])) excess = INFINITY;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  if (n > 0 && worst_excess > 0) {
    printf("FAIL %s%s: element %zu got %.9g want %.9g (rtol %g atol %g)\n", tag(), what, worst,
           (double)got[worst], want[worst], rtol, atol);
    failed++;
    return 0;
  }
  passed++;
  return 1;
}

int tu_ok(int cond, const char *what) {
  if (cond) {
    passed++;
  } else {
    printf("FAIL %s%s\n", tag(), what);
    failed++;
  }
  return cond;
}

void tu_ref_rope(double *x, size_t pos, size_t hd, double theta) {
  size_t half = hd / 2;
  for (size_t i = 0; i < half; i++) {
    double angle = (double)pos * pow(theta, -2.0 * (double)i / (double)hd);
    double x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cos(angle) - x2 * sin(angle);
    x[i + half] = x2 * cos(angle) + x1 * sin(angle);
  }
}

double tu_fd(double (*f)(void *ctx), void *ctx, double *x, size_t i, double h) {
  double saved = x[i];
  x[i] = saved + h;
  double up = f(ctx);
  x[i] = saved - h;
  double down = f(ctx);
  x[i] = saved;
  return (up - down) / (2 * h);
}
