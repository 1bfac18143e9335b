#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm.h"

static int passed, failed;
static starpu_data_handle_t handles[4096];
static size_t n_handles;
static void *allocations[4096];
static size_t n_allocations;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
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
  tu_sync_all();
  eellm_runtime_stop();
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

void tu_seed(uint64_t seed) { rng_state = seed * 0x9e3779b97f4a7c15ull + 1; }

double tu_uniform(double lo, double hi) {
  /* splitmix64 */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
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

int tu_check(const char *what, const float *got, const double *want, size_t n, double rtol,
             double atol) {
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
    printf("FAIL %s: element %zu got %.9g want %.9g (rtol %g atol %g)\n", what, worst,
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
    printf("FAIL %s\n", what);
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
