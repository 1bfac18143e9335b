/* Dense codelets (embedding, norm, linear, activation, tensor) run as real StarPU
 * tasks and compared with double-precision references: forwards directly,
 * backwards against central finite differences of L = <dy, f_ref(inputs)>.
 * Gradient buffers start non-zero (accumulating ones) or NaN (overwritten ones),
 * so both beta_dx semantics and parameter accumulation are checked. Every case
 * runs on every backend of the build (tu_for_each_backend). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "codelets/collective.h"
#include "testutil.h"

#define FWD_RTOL 1e-5
#define FWD_ATOL 1e-6
#define GRAD_RTOL 1e-4
#define GRAD_ATOL 1e-5
#define FD_STEP 1e-5
#define PAD 3 /* extra floats past each row of a padded matrix */
#define PAD_SENTINEL 12345.0f

/* ---- helpers ------------------------------------------------------------ */

static const char *label(const char *name, const char *what) {
  static char text[128];
  snprintf(text, sizeof text, "%s: %s", name, what);
  return text;
}

/* tu_check, after printing the worst error and how much of the tolerance it used. */
static void check(const char *what, const float *got, const double *want, size_t n, double rtol,
                  double atol) {
  double worst_abs = 0, worst_share = 0;
  for (size_t i = 0; i < n; i++) {
    double err = fabs((double)got[i] - want[i]);
    worst_abs = fmax(worst_abs, err);
    if (atol + rtol > 0) worst_share = fmax(worst_share, err / (atol + rtol * fabs(want[i])));
  }
  printf("  [%s] %-44s max abs err %.2e (%3.0f%% of tolerance)\n", tu_backend_name(), what,
         worst_abs, 100 * worst_share);
  tu_check(what, got, want, n, rtol, atol);
}

/* Checks got == base + dL/dx element-wise, dL/dx by central differences of loss(ctx),
 * which reads x. base NULL: the buffer was overwritten, not accumulated into. */
static void check_grad(const char *what, double (*loss)(void *), void *ctx, double *x, size_t n,
                       const float *got, const float *base) {
  double *want = tu_alloc_f64(n);
  for (size_t i = 0; i < n; i++) want[i] = (base ? base[i] : 0) + tu_fd(loss, ctx, x, i, FD_STEP);
  check(what, got, want, n, GRAD_RTOL, GRAD_ATOL);
}

static double dot(const double *a, const double *b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += a[i] * b[i];
  return sum;
}

static float *random_floats(size_t n, double lo, double hi) {
  float *x = tu_alloc(n);
  tu_fill(x, n, lo, hi);
  return x;
}

static float *nan_floats(size_t n) {
  float *x = tu_alloc(n);
  for (size_t i = 0; i < n; i++) x[i] = NAN;
  return x;
}

static float *copy_floats(const float *x, size_t n) {
  if (!x) return NULL;
  float *copy = tu_alloc(n);
  for (size_t i = 0; i < n; i++) copy[i] = x[i];
  return copy;
}

static double *to_f64_or_null(const float *x, size_t n) { return x ? tu_to_f64(x, n) : NULL; }

/* Padded matrices: registered with a row stride of cols + PAD over a copy whose
 * padding holds a sentinel, so a kernel ignoring ld, or writing past a row, is caught. */
struct padded_matrix {
  starpu_data_handle_t handle;
  float *dense, *strided;
  size_t rows, cols;
};
static struct padded_matrix padded[64];
static size_t n_padded;

static starpu_data_handle_t matrix(float *dense, size_t rows, size_t cols, int pad) {
  if (!pad) return tu_matrix(dense, rows, cols);
  if (n_padded == sizeof padded / sizeof padded[0]) {
    fprintf(stderr, "test: too many padded matrices\n");
    exit(1);
  }
  size_t ld = cols + PAD;
  float *strided = tu_alloc(rows * ld);
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < ld; c++)
      strided[r * ld + c] = c < cols ? dense[r * cols + c] : PAD_SENTINEL;
  starpu_data_handle_t h;
  starpu_matrix_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)strided, ld, cols, rows,
                              sizeof(float));
  padded[n_padded++] = (struct padded_matrix){h, dense, strided, rows, cols};
  return h;
}

/* Runs every submitted task, brings all handles home, copies padded matrices
 * back into their dense arrays and checks that their padding is untouched. */
static void run_tasks(void) {
  tu_sync_all();
  int padding_intact = 1;
  for (size_t i = 0; i < n_padded; i++) {
    struct padded_matrix *p = &padded[i];
    size_t ld = p->cols + PAD;
    starpu_data_unregister(p->handle);
    for (size_t r = 0; r < p->rows; r++)
      for (size_t c = 0; c < ld; c++) {
        if (c < p->cols)
          p->dense[r * p->cols + c] = p->strided[r * ld + c];
        else
          padding_intact &= p->strided[r * ld + c] == PAD_SENTINEL;
      }
  }
  if (n_padded) tu_ok(padding_intact, "padding past each row untouched");
  n_padded = 0;
}

/* ---- embedding ---------------------------------------------------------- */

struct embed_ref {
  size_t rows, dim, seq_len;
  const int32_t *tokens;
  double *wte, *wpe, *dout, *out; /* wpe NULL: no learned positions */
};

static void embed_ref_fwd(const struct embed_ref *r) {
  for (size_t n = 0; n < r->rows; n++)
    for (size_t d = 0; d < r->dim; d++)
      r->out[n * r->dim + d] =
          r->wte[r->tokens[n] * r->dim + d] + (r->wpe ? r->wpe[(n % r->seq_len) * r->dim + d] : 0);
}

static double embed_loss(void *ctx) {
  const struct embed_ref *r = ctx;
  embed_ref_fwd(r);
  return dot(r->dout, r->out, r->rows * r->dim);
}

struct embed_case {
  const char *name;
  size_t batch, seq_len, vocab, dim;
  int with_wpe, pad;
};

/* The vocabulary split in two parts, as two tensor-parallel ranks hold it: the
 * parts' outputs (positions added by the first) sum to the whole embedding,
 * and the parts' dwte make the whole's. */
static void test_embedding_parts(const struct embed_case *c, const struct eellm_task_info *ti,
                                 int32_t *tokens, float *wte, float *wpe, float *out, float *dout,
                                 const float *dwte, const float *dwte0) {
  size_t rows = c->batch * c->seq_len, dim = c->dim, context = c->seq_len + 2;
  float *sum = tu_alloc(rows * dim), *dparts = tu_alloc(c->vocab * dim);
  for (unsigned k = 0; k < 2; k++) {
    size_t lo, n;
    eellm_tp_range(c->vocab, 2, k, &lo, &n);
    float *part = nan_floats(rows * dim);
    starpu_data_handle_t h_wpe = wpe && k == 0 ? tu_matrix(wpe, context, dim) : NULL;
    eellm_insert_embed_fwd(tu_vector_i32(tokens, rows), tu_matrix(wte + lo * dim, n, dim), h_wpe,
                           tu_matrix(part, rows, dim), (unsigned)c->seq_len, lo, ti);
    eellm_insert_embed_bwd(tu_vector_i32(tokens, rows), tu_matrix(dout, rows, dim),
                           tu_matrix(dparts + lo * dim, n, dim), NULL, (unsigned)c->seq_len, lo,
                           ti);
    run_tasks();
    for (size_t i = 0; i < rows * dim; i++) sum[i] += part[i];
  }
  double *want_dwte = tu_alloc_f64(c->vocab * dim);
  for (size_t i = 0; i < c->vocab * dim; i++) want_dwte[i] = (double)dwte[i] - dwte0[i];
  tu_check(label(c->name, "vocabulary parts: outputs sum to the whole"), sum,
           tu_to_f64(out, rows * dim), rows * dim, 1e-6, 1e-6);
  tu_check(label(c->name, "vocabulary parts: dwte"), dparts, want_dwte, c->vocab * dim, 1e-5, 1e-5);
}

static void test_embedding(const struct eellm_task_info *ti, void *ctx) {
  const struct embed_case *c = ctx;
  size_t rows = c->batch * c->seq_len, dim = c->dim;
  size_t context = c->seq_len + 2; /* the last two positions are never used */
  int32_t *tokens = malloc(rows * sizeof *tokens);
  if (!tokens || rows == 0) exit(1);
  for (size_t n = 0; n < rows; n++) tokens[n] = (int32_t)tu_uniform(0, (double)c->vocab);
  tokens[rows - 1] = tokens[0]; /* two rows share a token: their gradients must add */

  float *wte = random_floats(c->vocab * dim, -1, 1);
  float *wpe = c->with_wpe ? random_floats(context * dim, -1, 1) : NULL;
  float *out = nan_floats(rows * dim), *dout = random_floats(rows * dim, -1, 1);
  float *dwte = random_floats(c->vocab * dim, -1, 1), *dwte0 = copy_floats(dwte, c->vocab * dim);
  float *dwpe = c->with_wpe ? random_floats(context * dim, -1, 1) : NULL;
  float *dwpe0 = copy_floats(dwpe, context * dim);

  starpu_data_handle_t h_tokens = tu_vector_i32(tokens, rows);
  starpu_data_handle_t h_wpe = wpe ? matrix(wpe, context, dim, c->pad) : NULL;
  starpu_data_handle_t h_dwpe = dwpe ? matrix(dwpe, context, dim, c->pad) : NULL;
  eellm_insert_embed_fwd(h_tokens, matrix(wte, c->vocab, dim, c->pad), h_wpe,
                         matrix(out, rows, dim, c->pad), (unsigned)c->seq_len, 0, ti);
  eellm_insert_embed_bwd(h_tokens, matrix(dout, rows, dim, c->pad),
                         matrix(dwte, c->vocab, dim, c->pad), h_dwpe, (unsigned)c->seq_len, 0,
                         ti);
  run_tasks();

  struct embed_ref r = {rows,
                        dim,
                        c->seq_len,
                        tokens,
                        tu_to_f64(wte, c->vocab * dim),
                        to_f64_or_null(wpe, context * dim),
                        tu_to_f64(dout, rows * dim),
                        tu_alloc_f64(rows * dim)};
  embed_ref_fwd(&r);
  check(label(c->name, "out"), out, r.out, rows * dim, FWD_RTOL, FWD_ATOL);
  check_grad(label(c->name, "dwte"), embed_loss, &r, r.wte, c->vocab * dim, dwte, dwte0);
  if (wpe) check_grad(label(c->name, "dwpe"), embed_loss, &r, r.wpe, context * dim, dwpe, dwpe0);
  test_embedding_parts(c, ti, tokens, wte, wpe, out, dout, dwte, dwte0);
  free(tokens);
}

/* ---- norm --------------------------------------------------------------- */

struct norm_ref {
  enum eellm_norm_kind kind;
  size_t rows, dim;
  double eps;
  double *x, *gain, *bias, *dy, *y, *stats; /* bias NULL: none */
};

static void norm_ref_fwd(const struct norm_ref *r) {
  for (size_t n = 0; n < r->rows; n++) {
    const double *x = r->x + n * r->dim;
    double mean = 0, second_moment = 0;
    if (r->kind == EELLM_LAYERNORM) {
      for (size_t d = 0; d < r->dim; d++) mean += x[d] / r->dim;
      for (size_t d = 0; d < r->dim; d++) second_moment += (x[d] - mean) * (x[d] - mean) / r->dim;
    } else {
      for (size_t d = 0; d < r->dim; d++) second_moment += x[d] * x[d] / r->dim;
    }
    double rstd = 1 / sqrt(second_moment + r->eps);
    for (size_t d = 0; d < r->dim; d++)
      r->y[n * r->dim + d] = (x[d] - mean) * rstd * r->gain[d] + (r->bias ? r->bias[d] : 0);
    r->stats[2 * n] = mean;
    r->stats[2 * n + 1] = rstd;
  }
}

static double norm_loss(void *ctx) {
  const struct norm_ref *r = ctx;
  norm_ref_fwd(r);
  return dot(r->dy, r->y, r->rows * r->dim);
}

struct norm_case {
  const char *name;
  enum eellm_norm_kind kind;
  size_t rows, dim;
  int with_bias, with_dgain, beta_dx, pad;
};

static void test_norm(const struct eellm_task_info *ti, void *ctx) {
  const struct norm_case *c = ctx;
  size_t rows = c->rows, dim = c->dim, size = rows * dim;
  const float eps = 1e-5f;
  float *x = random_floats(size, -1, 3); /* off-centre, so the mean matters */
  float *gain = random_floats(dim, 0.5, 1.5);
  float *bias = c->with_bias ? random_floats(dim, -0.5, 0.5) : NULL;
  float *y = nan_floats(size), *stats = nan_floats(rows * 2);
  float *dy = random_floats(size, -1, 1);
  float *dx = c->beta_dx ? random_floats(size, -1, 1) : nan_floats(size);
  float *dx0 = copy_floats(dx, size);
  float *dgain = c->with_dgain ? random_floats(dim, -1, 1) : NULL,
        *dgain0 = copy_floats(dgain, dim);
  float *dbias = c->with_bias ? random_floats(dim, -1, 1) : NULL, *dbias0 = copy_floats(dbias, dim);

  starpu_data_handle_t h_x = matrix(x, rows, dim, c->pad), h_gain = tu_vector(gain, dim);
  starpu_data_handle_t h_stats = matrix(stats, rows, 2, c->pad);
  eellm_insert_norm_fwd(h_x, h_gain, bias ? tu_vector(bias, dim) : NULL,
                        matrix(y, rows, dim, c->pad), h_stats, c->kind, eps, ti);
  eellm_insert_norm_bwd(h_x, h_gain, h_stats, matrix(dy, rows, dim, c->pad),
                        matrix(dx, rows, dim, c->pad), dgain ? tu_vector(dgain, dim) : NULL,
                        dbias ? tu_vector(dbias, dim) : NULL, c->kind, c->beta_dx, ti);
  run_tasks();

  struct norm_ref r = {c->kind,
                       rows,
                       dim,
                       eps,
                       tu_to_f64(x, size),
                       tu_to_f64(gain, dim),
                       to_f64_or_null(bias, dim),
                       tu_to_f64(dy, size),
                       tu_alloc_f64(size),
                       tu_alloc_f64(rows * 2)};
  norm_ref_fwd(&r);
  check(label(c->name, "y"), y, r.y, size, FWD_RTOL, FWD_ATOL);
  check(label(c->name, "stats"), stats, r.stats, rows * 2, FWD_RTOL, FWD_ATOL);
  check_grad(label(c->name, "dx"), norm_loss, &r, r.x, size, dx, c->beta_dx ? dx0 : NULL);
  if (dgain) check_grad(label(c->name, "dgain"), norm_loss, &r, r.gain, dim, dgain, dgain0);
  if (dbias) check_grad(label(c->name, "dbias"), norm_loss, &r, r.bias, dim, dbias, dbias0);
}

/* ---- linear ------------------------------------------------------------- */

struct linear_ref {
  size_t rows, k_in, m_out;
  int transpose_w;
  double *x, *w, *b, *res, *dy, *y; /* b, res NULL: none */
};

static void linear_ref_fwd(const struct linear_ref *r) {
  for (size_t n = 0; n < r->rows; n++)
    for (size_t m = 0; m < r->m_out; m++) {
      double sum = (r->b ? r->b[m] : 0) + (r->res ? r->res[n * r->m_out + m] : 0);
      for (size_t k = 0; k < r->k_in; k++) {
        double w = r->transpose_w ? r->w[m * r->k_in + k] : r->w[k * r->m_out + m];
        sum += r->x[n * r->k_in + k] * w;
      }
      r->y[n * r->m_out + m] = sum;
    }
}

static double linear_loss(void *ctx) {
  const struct linear_ref *r = ctx;
  linear_ref_fwd(r);
  return dot(r->dy, r->y, r->rows * r->m_out);
}

struct linear_case {
  const char *name;
  size_t rows, k_in, m_out;
  int transpose_w, with_bias, with_residual;
  int want_dx, beta_dx, want_dw; /* db is wanted exactly when there is a bias */
  int pad;
};

static void test_linear(const struct eellm_task_info *ti, void *ctx) {
  const struct linear_case *c = ctx;
  size_t n_x = c->rows * c->k_in, n_w = c->k_in * c->m_out, n_y = c->rows * c->m_out;
  size_t w_rows = c->transpose_w ? c->m_out : c->k_in, w_cols = c->transpose_w ? c->k_in : c->m_out;
  float *x = random_floats(n_x, -1, 1), *w = random_floats(n_w, -1, 1);
  float *b = c->with_bias ? random_floats(c->m_out, -1, 1) : NULL;
  float *res = c->with_residual ? random_floats(n_y, -1, 1) : NULL;
  float *y = nan_floats(n_y), *dy = random_floats(n_y, -1, 1);
  float *dx = NULL, *dw = NULL, *db = NULL;
  if (c->want_dx) dx = c->beta_dx ? random_floats(n_x, -1, 1) : nan_floats(n_x);
  if (c->want_dw) dw = random_floats(n_w, -1, 1);
  if (c->with_bias) db = random_floats(c->m_out, -1, 1);
  float *dx0 = copy_floats(dx, n_x), *dw0 = copy_floats(dw, n_w), *db0 = copy_floats(db, c->m_out);

  starpu_data_handle_t h_x = matrix(x, c->rows, c->k_in, c->pad);
  starpu_data_handle_t h_w = matrix(w, w_rows, w_cols, c->pad);
  eellm_insert_linear_fwd(h_x, h_w, b ? tu_vector(b, c->m_out) : NULL,
                          res ? matrix(res, c->rows, c->m_out, c->pad) : NULL,
                          matrix(y, c->rows, c->m_out, c->pad), c->transpose_w, ti);
  eellm_insert_linear_bwd(h_x, h_w, matrix(dy, c->rows, c->m_out, c->pad),
                          dx ? matrix(dx, c->rows, c->k_in, c->pad) : NULL,
                          dw ? matrix(dw, w_rows, w_cols, c->pad) : NULL,
                          db ? tu_vector(db, c->m_out) : NULL, c->transpose_w, c->beta_dx, ti);
  run_tasks();

  struct linear_ref r = {c->rows,
                         c->k_in,
                         c->m_out,
                         c->transpose_w,
                         tu_to_f64(x, n_x),
                         tu_to_f64(w, n_w),
                         to_f64_or_null(b, c->m_out),
                         to_f64_or_null(res, n_y),
                         tu_to_f64(dy, n_y),
                         tu_alloc_f64(n_y)};
  linear_ref_fwd(&r);
  check(label(c->name, "y"), y, r.y, n_y, FWD_RTOL, FWD_ATOL);
  if (dx) check_grad(label(c->name, "dx"), linear_loss, &r, r.x, n_x, dx, c->beta_dx ? dx0 : NULL);
  if (dw) check_grad(label(c->name, "dW"), linear_loss, &r, r.w, n_w, dw, dw0);
  if (db) check_grad(label(c->name, "db"), linear_loss, &r, r.b, c->m_out, db, db0);
}

/* One row against a transposed weight too big to stay in cache takes the thin
 * products' streaming order (cpu/linear.c): the same bits as that row among
 * three, each dot product summed alike whatever the number of rows. CPU only:
 * the bits are the CPU kernel's. */
static void test_rows_alike(void) {
  size_t rows = 3, k = 136, m = 1931; /* m * k past THIN_STREAM_FLOATS; k has a tail */
  float *x = random_floats(rows * k, -1, 1), *w = random_floats(m * k, -1, 1);
  float *y_all = nan_floats(rows * m), *y_one = nan_floats(m);
  struct eellm_task_info cpu = eellm_task_default;
  cpu.where = STARPU_CPU;
  starpu_data_handle_t h_w = tu_matrix(w, m, k);
  eellm_insert_linear_fwd(tu_matrix(x, rows, k), h_w, NULL, NULL, tu_matrix(y_all, rows, m), 1,
                          &cpu);
  eellm_insert_linear_fwd(tu_matrix(x + k, 1, k), h_w, NULL, NULL, tu_matrix(y_one, 1, m), 1, &cpu);
  run_tasks();
  check("linear transpose_w: row 1 alone = among 3, bits", y_one, tu_to_f64(y_all + m, m), m, 0, 0);
}

/* ---- bf16 weights --------------------------------------------------------- */

static float bits_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* x in bf16 the long way: the nearer of the two bf16 values around it, the one whose
 * last bit is even at a tie (an infinity past the largest); a NaN stays a NaN. */
static uint16_t bf16_ref(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  if (isnan(x)) return (uint16_t)(bits >> 16 | 0x40);
  if (isinf(x)) return (uint16_t)(bits >> 16);
  uint32_t lo = bits & 0xFFFF0000u, hi = lo + 0x10000u;
  /* past the largest bf16 the next step up is 2^128, which rounds to infinity */
  double hi_value = (hi & 0x7FFFFFFFu) == 0x7F800000u ? copysign(0x1p128, x) : bits_float(hi);
  double below = fabs((double)x - bits_float(lo)), above = fabs(hi_value - x);
  if (below < above || (below == above && !(lo & 0x10000u))) return (uint16_t)(lo >> 16);
  return (uint16_t)(hi >> 16);
}

/* to_bf16 rounds as bf16_ref does (ties both ways, both signs, past the largest bf16,
 * infinities, NaN, random values); a product on a bf16 weight of N rows (a split one
 * among them: the weight over 2 MiB) is the product on the weight widened to floats, in
 * double, within float rounding. CPU only. */
static void test_bf16(void) {
  struct eellm_task_info cpu = eellm_task_default;
  cpu.where = STARPU_CPU;
  float special[] = {1.0f + 0x1p-8f,
                     1.0f + 0x3p-8f,
                     -(1.0f + 0x1p-8f),
                     1.0f + 0x1p-8f + 0x1p-23f,
                     FLT_MAX,
                     -FLT_MAX,
                     3.3895313e38f,
                     -INFINITY,
                     INFINITY,
                     NAN,
                     0.0f};
  size_t n_special = sizeof special / sizeof special[0], n_round = n_special + 100;
  float *values = random_floats(n_round, -3, 3);
  memcpy(values, special, sizeof special);
  uint16_t *rounded = calloc(n_round, sizeof *rounded);
  eellm_insert_to_bf16(tu_matrix_u16(rounded, 1, n_round), tu_matrix(values, 1, n_round), &cpu);
  run_tasks();
  int same = 1;
  for (size_t i = 0; i < n_round; i++) same &= rounded[i] == bf16_ref(values[i]);
  tu_ok(same, "to_bf16: nearest, ties to even, inf and NaN");
  free(rounded);

  static const struct {
    size_t rows, k, m;
    int bias_residual;
  } cases[] = {{1, 136, 1931, 0}, {3, 136, 1931, 1}, {8, 40, 37, 0}, {1, 136, 7937, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    size_t N = cases[c].rows, k = cases[c].k, m = cases[c].m;
    float *x = random_floats(N * k, -1, 1), *w = random_floats(m * k, -1, 1);
    float *wide = tu_alloc(m * k), *y16 = nan_floats(N * m);
    float *b = cases[c].bias_residual ? random_floats(m, -1, 1) : NULL;
    float *res = cases[c].bias_residual ? random_floats(N * m, -1, 1) : NULL;
    uint16_t *w16 = calloc(m * k, sizeof *w16);
    for (size_t i = 0; i < m * k; i++) wide[i] = bits_float((uint32_t)bf16_ref(w[i]) << 16);
    starpu_data_handle_t h_w16 = tu_matrix_u16(w16, m, k), h_x = tu_matrix(x, N, k);
    eellm_insert_to_bf16(h_w16, tu_matrix(w, m, k), &cpu);
    eellm_insert_linear_fwd(h_x, h_w16, b ? tu_vector(b, m) : NULL,
                            res ? tu_matrix(res, N, m) : NULL, tu_matrix(y16, N, m), 1, &cpu);
    run_tasks();
    struct linear_ref r = {N,
                           k,
                           m,
                           1,
                           tu_to_f64(x, N * k),
                           tu_to_f64(wide, m * k),
                           to_f64_or_null(b, m),
                           to_f64_or_null(res, N * m),
                           NULL,
                           tu_alloc_f64(N * m)};
    linear_ref_fwd(&r);
    char what[96];
    snprintf(what, sizeof what, "linear_fwd bf16 W N=%zu K=%zu M=%zu%s", N, k, m,
             b ? " bias residual" : "");
    check(what, y16, r.y, N * m, FWD_RTOL, FWD_ATOL);
    free(w16);
  }
}

/* ---- activation --------------------------------------------------------- */

struct act_ref {
  enum eellm_activation act;
  size_t rows, width; /* width of a: F */
  double *h, *da, *a;
};

static double gelu_tanh_ref(double x) {
  return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

static void act_ref_fwd(const struct act_ref *r) {
  size_t h_width = r->act == EELLM_SWIGLU ? 2 * r->width : r->width;
  for (size_t n = 0; n < r->rows; n++)
    for (size_t f = 0; f < r->width; f++) {
      const double *h = r->h + n * h_width;
      double gate = h[f];
      r->a[n * r->width + f] =
          r->act == EELLM_GELU ? gelu_tanh_ref(gate) : gate / (1 + exp(-gate)) * h[r->width + f];
    }
}

static double act_loss(void *ctx) {
  const struct act_ref *r = ctx;
  act_ref_fwd(r);
  return dot(r->da, r->a, r->rows * r->width);
}

struct act_case {
  const char *name;
  enum eellm_activation act;
  size_t rows, width;
  int beta_dx, pad;
};

static void test_activation(const struct eellm_task_info *ti, void *ctx) {
  const struct act_case *c = ctx;
  size_t h_width = c->act == EELLM_SWIGLU ? 2 * c->width : c->width;
  size_t n_h = c->rows * h_width, n_a = c->rows * c->width;
  float *h = random_floats(n_h, -5, 5); /* both tails and the curved middle */
  float *a = nan_floats(n_a), *da = random_floats(n_a, -1, 1);
  float *dh = c->beta_dx ? random_floats(n_h, -1, 1) : nan_floats(n_h);
  float *dh0 = copy_floats(dh, n_h);

  starpu_data_handle_t h_h = matrix(h, c->rows, h_width, c->pad);
  eellm_insert_activation_fwd(h_h, matrix(a, c->rows, c->width, c->pad), c->act, ti);
  eellm_insert_activation_bwd(h_h, matrix(da, c->rows, c->width, c->pad),
                              matrix(dh, c->rows, h_width, c->pad), c->act, c->beta_dx, ti);
  run_tasks();

  struct act_ref r = {c->act,           c->rows, c->width, tu_to_f64(h, n_h), tu_to_f64(da, n_a),
                      tu_alloc_f64(n_a)};
  act_ref_fwd(&r);
  check(label(c->name, "a"), a, r.a, n_a, FWD_RTOL, FWD_ATOL);
  check_grad(label(c->name, "dh"), act_loss, &r, r.h, n_h, dh, c->beta_dx ? dh0 : NULL);
}

/* ---- tensor ------------------------------------------------------------- */

static void test_zero(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  size_t rows = 5, cols = 7, len = 13;
  float *m = random_floats(rows * cols, -1, 1), *v = random_floats(len, -1, 1);
  eellm_insert_zero(matrix(m, rows, cols, 1), ti);
  eellm_insert_zero(tu_vector(v, len), ti);
  run_tasks();
  double *zeros = tu_alloc_f64(rows * cols);
  check("zero: padded matrix", m, zeros, rows * cols, 0, 0);
  check("zero: vector", v, zeros, len, 0, 0);
}

static void test_axpy(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  size_t rows = 5, cols = 7, len = 13;
  const float alpha = -0.75f;
  float *dst_m = random_floats(rows * cols, -1, 1), *src_m = random_floats(rows * cols, -1, 1);
  float *dst_v = random_floats(len, -1, 1), *src_v = random_floats(len, -1, 1);
  double *want_m = tu_alloc_f64(rows * cols), *want_v = tu_alloc_f64(len);
  for (size_t i = 0; i < rows * cols; i++) want_m[i] = dst_m[i] + (double)alpha * src_m[i];
  for (size_t i = 0; i < len; i++) want_v[i] = dst_v[i] + (double)alpha * src_v[i];

  /* dst padded, src dense: the two strides differ */
  eellm_insert_axpy(matrix(dst_m, rows, cols, 1), matrix(src_m, rows, cols, 0), alpha, ti);
  eellm_insert_axpy(tu_vector(dst_v, len), tu_vector(src_v, len), alpha, ti);
  run_tasks();
  check("axpy: padded matrix += dense matrix", dst_m, want_m, rows * cols, FWD_RTOL, FWD_ATOL);
  check("axpy: vector", dst_v, want_v, len, FWD_RTOL, FWD_ATOL);
}

static void test_copy(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  size_t rows = 5, cols = 7;
  float *dst = random_floats(rows * cols, -1, 1), *src = random_floats(rows * cols, -1, 1);
  double *want = tu_to_f64(src, rows * cols);
  /* dst dense, src padded: the two strides differ */
  eellm_insert_copy(matrix(dst, rows, cols, 0), matrix(src, rows, cols, 1), ti);
  run_tasks();
  check("copy: dense matrix = padded matrix", dst, want, rows * cols, 0, 0);
}

static void test_vector_set(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  size_t len = 11;
  float *t = random_floats(len, -1, 1), *data = random_floats(len, -1, 1);
  double *want = tu_to_f64(data, len);
  eellm_insert_vector_set(tu_vector(t, len), data, ti);
  for (size_t i = 0; i < len; i++) data[i] = -7; /* the task carries its own copy */
  run_tasks();
  check("vector_set: vector from the task's bytes", t, want, len, 0, 0);
}

/* One task sets a vector, a padded matrix and an int32 vector, each from its own bytes. */
static void test_tensors_set(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  size_t len = 11, rows = 3, cols = 5;
  float *v = random_floats(len, -1, 1), *m = random_floats(rows * cols, -1, 1);
  float *v_data = random_floats(len, -1, 1), *m_data = random_floats(rows * cols, -1, 1);
  int32_t ints[4] = {0}, ints_data[4] = {3, -1, 7, 2};
  double *want_v = tu_to_f64(v_data, len), *want_m = tu_to_f64(m_data, rows * cols);
  starpu_data_handle_t t[] = {tu_vector(v, len), matrix(m, rows, cols, 1), tu_vector_i32(ints, 4)};
  const void *data[] = {v_data, m_data, ints_data};
  eellm_insert_tensors_set(t, data, 3, ti);
  for (size_t i = 0; i < len; i++) v_data[i] = -7; /* the task carries its own copy */
  run_tasks();
  check("tensors_set: the vector", v, want_v, len, 0, 0);
  check("tensors_set: the padded matrix", m, want_m, rows * cols, 0, 0);
  tu_ok(ints[0] == 3 && ints[1] == -1 && ints[2] == 7 && ints[3] == 2, "tensors_set: the int32s");
}

int main(void) {
  tu_start();
  tu_seed(7);

  static const struct embed_case embed_cases[] = {
      {"embed B=3 T=7 V=37 D=12", 3, 7, 37, 12, 1, 0},
      {"embed B=2 T=1 V=5", 2, 1, 5, 12, 1, 0},
      {"embed B=2 T=5 D=7 padded", 2, 5, 37, 7, 1, 1},
      {"embed no wpe B=3 T=13", 3, 13, 37, 12, 0, 0},
  };
  static const char *const embed_ops[] = {"embed_fwd", "embed_bwd", NULL};
  for (size_t i = 0; i < sizeof embed_cases / sizeof embed_cases[0]; i++)
    tu_for_each_backend(embed_cases[i].name, embed_ops, test_embedding, (void *)&embed_cases[i]);

  static const struct norm_case norm_cases[] = {
      /* name, kind, rows, dim, bias, dgain, beta_dx, pad */
      {"layernorm N=21 D=12", EELLM_LAYERNORM, 21, 12, 1, 1, 0, 0},
      {"layernorm no bias N=1 beta_dx=1", EELLM_LAYERNORM, 1, 12, 0, 1, 1, 0},
      {"layernorm N=13 D=37 padded", EELLM_LAYERNORM, 13, 37, 1, 1, 1, 1},
      {"rmsnorm N=14 D=12", EELLM_RMSNORM, 14, 12, 0, 1, 0, 0},
      {"rmsnorm N=7 beta_dx=1 padded", EELLM_RMSNORM, 7, 12, 0, 1, 1, 1},
      {"rmsnorm frozen gain N=3", EELLM_RMSNORM, 3, 12, 0, 0, 0, 0},
  };
  static const char *const norm_ops[] = {"norm_fwd", "norm_bwd", NULL};
  for (size_t i = 0; i < sizeof norm_cases / sizeof norm_cases[0]; i++)
    tu_for_each_backend(norm_cases[i].name, norm_ops, test_norm, (void *)&norm_cases[i]);

  static const struct linear_case linear_cases[] = {
      /* name, rows, K, M, transpose_w, bias, residual, dx, beta_dx, dW, pad */
      {"linear bias N=21 K=12 M=37", 21, 12, 37, 0, 1, 0, 1, 0, 1, 0},
      {"linear transpose_w N=7 beta_dx=1", 7, 12, 37, 1, 0, 0, 1, 1, 1, 0},
      {"linear residual no bias N=13", 13, 12, 12, 0, 0, 1, 1, 0, 1, 0},
      {"linear no dx N=1", 1, 12, 5, 0, 1, 1, 0, 0, 1, 0},
      {"linear frozen W N=6 padded", 6, 12, 37, 0, 1, 1, 1, 1, 0, 1},
      {"linear transpose_w bias padded", 14, 13, 9, 1, 1, 0, 1, 0, 1, 1},
      /* At most 8 rows on a transposed weight: the CPU's own dot products
       * (cpu/linear.c), 16 lanes at a time and a tail. */
      {"linear transpose_w N=3 K=40 bias residual padded", 3, 40, 37, 1, 1, 1, 1, 0, 1, 1},
      {"linear transpose_w N=8 K=48 M=21", 8, 48, 21, 1, 0, 0, 1, 0, 1, 0},
      /* One row: OpenBLAS's sgemv on a small weight, the thin products' streaming
       * order on one too big to stay in cache (the head at batch 1). */
      {"linear transpose_w N=1 bias", 1, 12, 37, 1, 1, 0, 1, 0, 1, 0},
      {"linear transpose_w N=1 K=136 M=1931 bias residual", 1, 136, 1931, 1, 1, 1, 0, 0, 0, 0},
  };
  static const char *const linear_ops[] = {"linear_fwd", "linear_bwd", "linear_dw", NULL};
  for (size_t i = 0; i < sizeof linear_cases / sizeof linear_cases[0]; i++)
    tu_for_each_backend(linear_cases[i].name, linear_ops, test_linear, (void *)&linear_cases[i]);
  test_rows_alike();
  test_bf16();

  static const struct act_case act_cases[] = {
      /* name, act, rows, F, beta_dx, pad */
      {"gelu N=13 F=12", EELLM_GELU, 13, 12, 0, 0},
      {"gelu N=1 F=37 beta_dx=1 padded", EELLM_GELU, 1, 37, 1, 1},
      {"swiglu N=7 F=5", EELLM_SWIGLU, 7, 5, 0, 0},
      {"swiglu N=6 F=13 beta_dx=1 padded", EELLM_SWIGLU, 6, 13, 1, 1},
  };
  static const char *const act_ops[] = {"activation_fwd", "activation_bwd", NULL};
  for (size_t i = 0; i < sizeof act_cases / sizeof act_cases[0]; i++)
    tu_for_each_backend(act_cases[i].name, act_ops, test_activation, (void *)&act_cases[i]);

  static const char *const zero_op[] = {"zero", NULL}, *const axpy_op[] = {"axpy", NULL};
  static const char *const copy_op[] = {"copy", NULL}, *const set_op[] = {"vector_set", NULL};
  tu_for_each_backend("zero", zero_op, test_zero, NULL);
  tu_for_each_backend("axpy", axpy_op, test_axpy, NULL);
  tu_for_each_backend("copy", copy_op, test_copy, NULL);
  tu_for_each_backend("vector_set", set_op, test_vector_set, NULL);
  tu_for_each_backend("tensors_set", set_op, test_tensors_set, NULL);
  return tu_finish();
}
