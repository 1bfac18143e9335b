/* Helpers shared by eellm's C tests: StarPU start-up, handles over host arrays,
 * random data, tolerance checks against double-precision references, central
 * finite differences, a loop over the backends (architectures) the codelets
 * run on, and the closing "N passed, N failed" line. */
#ifndef EELLM_TESTUTIL_H
#define EELLM_TESTUTIL_H

#include <starpu.h>
#include <stddef.h>
#include <stdint.h>

/* Starts the eellm runtime (StarPU); exits the test with status 1 if it cannot. */
void tu_start(void);
/* Stops StarPU, prints "<prog>: N passed, N failed" and returns the exit status. */
int tu_finish(void);

/* Handles over caller-owned host memory (rows x cols row-major floats, etc.). */
starpu_data_handle_t tu_matrix(float *data, size_t rows, size_t cols);
/* The same with rows ld >= cols floats apart (padded rows). */
starpu_data_handle_t tu_matrix_ld(float *data, size_t rows, size_t cols, size_t ld);
starpu_data_handle_t tu_vector(float *data, size_t n);
/* rows x cols 2-byte elements (bf16), row-major. */
starpu_data_handle_t tu_matrix_u16(uint16_t *data, size_t rows, size_t cols);
starpu_data_handle_t tu_vector_i32(int32_t *data, size_t n);
starpu_data_handle_t tu_vector_f64(double *data, size_t n);
/* Waits for all tasks and brings every registered handle home (unregisters them). */
void tu_sync_all(void);

/* Deterministic uniform numbers in [lo, hi). */
void tu_seed(uint64_t seed);
double tu_uniform(double lo, double hi);
void tu_fill(float *x, size_t n, double lo, double hi);
float *tu_alloc(size_t n);           /* zeroed floats, freed by tu_finish */
double *tu_alloc_f64(size_t n);      /* zeroed doubles, freed by tu_finish */
double *tu_to_f64(const float *x, size_t n); /* copy widened to double, freed by tu_finish */

/* Records one check: |got - want| <= atol + rtol * |want| element-wise.
 * Prints the worst element on failure. Returns 1 if it passed. */
int tu_check(const char *what, const float *got, const double *want, size_t n,
             double rtol, double atol);
/* Records a plain condition. */
int tu_ok(int cond, const char *what);

/* A fresh directory under /tmp; tu_finish removes it with everything in it. */
const char *tu_tempdir(void);

/* Double-precision reference of RoPE (Hugging Face rotate-half: pairs (i, i + hd/2),
 * angle pos * theta^(-2i/hd)) on one head vector x [hd], in place. */
void tu_ref_rope(double *x, size_t pos, size_t hd, double theta);

/* ---- backends -------------------------------------------------------------
 * The backends of this build: cpu first, then cuda when StarPU has CUDA workers.
 * tu_for_each_backend runs run(info, ctx) once per backend that implements every
 * codelet named in ops (task names, NULL-terminated), `info` pinning the tasks to
 * that backend (struct eellm_task_info's where), with the random numbers rewound
 * so that every backend gets the same inputs. On cpu the checks are those of the
 * test (double-precision references, finite differences); on another backend
 * every tu_check is made as well and, as in ggml's test-backend-ops, compared
 * with the same check's cpu result within the same tolerance. Prints the
 * backends once ("backends: cpu") and a line per case and backend. */
struct eellm_task_info;
void tu_for_each_backend(const char *what, const char *const *ops,
                         void (*run)(const struct eellm_task_info *info, void *ctx), void *ctx);
/* The backend being run ("cpu" outside tu_for_each_backend), for labels. */
const char *tu_backend_name(void);

/* Central finite difference of f at x[i] in double precision, step h. */
double tu_fd(double (*f)(void *ctx), void *ctx, double *x, size_t i, double h);

#endif
