/* Linear layer y = x @ W (+ b) (+ residual), forward and backward, on cblas_sgemm
 * (but for a few rows against a transposed weight), and the column sums that make bias
 * gradients. */
#include <cblas.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "vector.h"

/* ---- thin products on a transposed weight ------------------------------ */

/* A few rows against a weight used transposed (the head's [V, D] at decoding):
 * OpenBLAS packs the whole weight for them and runs at a third of the core's
 * rate (its sgemv, for one row, at about half the rate of a plain read of the
 * weight); these dot products read it once, 4 rows of it against up to 4 rows
 * of a at a time, with the 16 lanes of each of the 16 sums folded into 4 floats
 * at the end of a row block. Where the AVX-512 clone runs (eellm_vf16_registers):
 * compiled for AVX2 they took 5.5-7 times as long as on AVX-512 (25128 x 128, one
 * row: 2366 us against 427), and OpenBLAS does better. bf16 weights have no other
 * kernel: there they run, slowly. */
enum { THIN_MAX_ROWS = 8 };
_Static_assert((int)EELLM_CPU_BF16_MAX_ROWS == (int)THIN_MAX_ROWS, "bf16 products are thin ones");
/* One row against a weight of fewer floats, which stays in cache, runs on sgemv. */
enum { THIN_STREAM_FLOATS = 1 << 18 };

typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

/* bf16 weights are the upper halves of floats: widened exactly by putting each
 * above 16 zero bits (one interleave with a zero vector). */
typedef uint16_t vh16 __attribute__((vector_size(32)));
typedef uint16_t vh32 __attribute__((vector_size(64)));

static inline __attribute__((always_inline)) vf16 load16_bf16(const uint16_t *p) {
  vh16 h, zero = {0};
  memcpy(&h, p, sizeof h);
  vh32 halves =
      __builtin_shufflevector(zero, h, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8,
                              24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  vf16 v;
  memcpy(&v, &halves, sizeof v);
  return v;
}

static inline float bf16_to_float(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* 16 weights from element i of row p, floats or (bf16 a constant 1) bf16. */
static inline __attribute__((always_inline)) vf16 load_w16(const int bf16, const void *p,
                                                           size_t i) {
  return bf16 ? load16_bf16((const uint16_t *)p + i) : load16((const float *)p + i);
}

static inline __attribute__((always_inline)) float load_w1(const int bf16, const void *p,
                                                           size_t i) {
  return bf16 ? bf16_to_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* The lane sums of a0 .. a3, in order: halves added pairwise, four times. */
static inline __attribute__((always_inline)) vf4 lane_sums(vf16 a0, vf16 a1, vf16 a2, vf16 a3) {
  vf16 s01 =
      __builtin_shufflevector(a0, a1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
      __builtin_shufflevector(a0, a1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  vf16 s23 =
      __builtin_shufflevector(a2, a3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
      __builtin_shufflevector(a2, a3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  vf16 s =
      __builtin_shufflevector(s01, s23, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
      __builtin_shufflevector(s01, s23, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  vf8 t = __builtin_shufflevector(s, s, 0, 1, 4, 5, 8, 9, 12, 13) +
          __builtin_shufflevector(s, s, 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(t, t, 0, 2, 4, 6) + __builtin_shufflevector(t, t, 1, 3, 5, 7);
}

/* c [R, cols] = alpha a [R, k] @ [b0; b1; b2; b3]^T [:, :cols] + beta c (beta 0: c not
 * read), R <= 4, cols <= 4; rows of b past cols repeat the last; b's rows floats, or
 * bf16 where the constant bf16 is 1 (widened, then the same arithmetic). Each dot
 * product is computed alike wherever its row of b falls: a product's bits do not
 * depend on how its columns are split into blocks or tensor-parallel parts. */
static inline __attribute__((always_inline)) void thin_block(const int bf16, const size_t R,
                                                             size_t cols, size_t k, float alpha,
                                                             const float *a, size_t ld_a,
                                                             const void *const b[4], float beta,
                                                             float *c, size_t ld_c) {
  vf16 acc[4][4];
  for (size_t r = 0; r < R; r++)
    for (int j = 0; j < 4; j++) acc[r][j] = (vf16){0};
  size_t i = 0;
  if (R == 1 && !bf16) {
    /* One row of a against a float weight streamed from memory: b's rows are read one
     * after the other, which the hardware prefetcher follows (interleaved, the
     * head's 512-byte rows come at half the rate). The same sums in another order.
     * bf16 rows (256 bytes) are read interleaved: widening makes each row's chain of
     * sums the bound there, and four chains at once hide it. */
    for (int j = 0; j < 4; j++) {
      vf16 sum = acc[0][j]; /* in a register through the row */
      for (i = 0; i + 16 <= k; i += 16) sum += load_w16(bf16, b[j], i) * load16(a + i);
      acc[0][j] = sum;
    }
  } else {
    for (; i + 16 <= k; i += 16) {
      vf16 b0 = load_w16(bf16, b[0], i), b1 = load_w16(bf16, b[1], i), b2 = load_w16(bf16, b[2], i),
           b3 = load_w16(bf16, b[3], i);
      for (size_t r = 0; r < R; r++) {
        vf16 ar = load16(a + r * ld_a + i);
        acc[r][0] += b0 * ar;
        acc[r][1] += b1 * ar;
        acc[r][2] += b2 * ar;
        acc[r][3] += b3 * ar;
      }
    }
  }
  for (size_t r = 0; r < R; r++) {
    vf4 dot = lane_sums(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    for (size_t t = i; t < k; t++)
      for (int j = 0; j < 4; j++) dot[j] += a[r * ld_a + t] * load_w1(bf16, b[j], t);
    for (size_t j = 0; j < cols; j++)
      c[r * ld_c + j] = alpha * dot[j] + (beta != 0 ? beta * c[r * ld_c + j] : 0.0f);
  }
}

/* c [N, m] = alpha a [N, k] @ b [m, k]^T + beta c for 1 <= N <= THIN_MAX_ROWS, b floats
 * or (bf16 1) bf16. */
static inline __attribute__((always_inline)) void thin_rows(const int bf16, const size_t N,
                                                            size_t m, size_t k, float alpha,
                                                            const float *a, size_t ld_a,
                                                            const void *b, size_t ld_b, float beta,
                                                            float *c, size_t ld_c) {
  size_t row_bytes = ld_b * (bf16 ? sizeof(uint16_t) : sizeof(float));
  for (size_t col = 0; col < m; col += 4) {
    size_t cols = m - col < 4 ? m - col : 4;
    const void *b_rows[4];
    for (size_t j = 0; j < 4; j++)
      b_rows[j] = (const char *)b + (col + (j < cols ? j : cols - 1)) * row_bytes;
    for (size_t r0 = 0; r0 < N; r0 += 4) {
      const float *a_rows = a + r0 * ld_a;
      float *c_block = c + r0 * ld_c + col;
      if (N - r0 >= 4)
        thin_block(bf16, 4, cols, k, alpha, a_rows, ld_a, b_rows, beta, c_block, ld_c);
      else
        thin_block(bf16, N - r0, cols, k, alpha, a_rows, ld_a, b_rows, beta, c_block, ld_c);
    }
  }
}

/* thin_rows with n a constant in each case, so that its loops over rows unroll. */
static inline __attribute__((always_inline)) void thin_matmul(const int bf16, size_t n, size_t m,
                                                              size_t k, float alpha, const float *a,
                                                              size_t ld_a, const void *b,
                                                              size_t ld_b, float beta, float *c,
                                                              size_t ld_c) {
  switch (n) {
#define THIN_CASE(N)                                                  \
  case N:                                                             \
    thin_rows(bf16, N, m, k, alpha, a, ld_a, b, ld_b, beta, c, ld_c); \
    break;
    THIN_CASE(1)
    THIN_CASE(2) THIN_CASE(3) THIN_CASE(4) THIN_CASE(5) THIN_CASE(6) THIN_CASE(7) THIN_CASE(8)
#undef THIN_CASE
  }
}

EELLM_VECTORIZED static void thin_matmul_t(size_t n, size_t m, size_t k, float alpha,
                                           const float *a, size_t ld_a, const float *b, size_t ld_b,
                                           float beta, float *c, size_t ld_c) {
  thin_matmul(0, n, m, k, alpha, a, ld_a, b, ld_b, beta, c, ld_c);
}

EELLM_VECTORIZED static void thin_matmul_t_bf16(size_t n, size_t m, size_t k, float alpha,
                                                const float *a, size_t ld_a, const uint16_t *b,
                                                size_t ld_b, float beta, float *c, size_t ld_c) {
  thin_matmul(1, n, m, k, alpha, a, ld_a, b, ld_b, beta, c, ld_c);
}

void eellm_cpu_matmul(size_t n, size_t m, size_t k, int transpose_b, float alpha, const float *a,
                      size_t ld_a, const float *b, size_t ld_b, float beta, float *c, size_t ld_c) {
  if (transpose_b && n <= THIN_MAX_ROWS && (n > 1 || m * k >= THIN_STREAM_FLOATS) &&
      eellm_vf16_registers()) {
    thin_matmul_t(n, m, k, alpha, a, ld_a, b, ld_b, beta, c, ld_c);
    return;
  }
  if (n == 1) {
    /* c^T = B^T a^T: sgemv streams B once; a one-row sgemm repacks all of B. */
    if (transpose_b)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, (int)k, alpha, b, (int)ld_b, a, 1, beta, c,
                  1);
    else
      cblas_sgemv(CblasRowMajor, CblasTrans, (int)k, (int)m, alpha, b, (int)ld_b, a, 1, beta, c,
                  1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, (int)n, (int)m,
              (int)k, alpha, a, (int)ld_a, b, (int)ld_b, beta, c, (int)ld_c);
}

/* y [n, m] = b + res where either is given (the product is then added on top); returns
 * the product's beta. */
EELLM_VECTORIZED static float bias_and_residual(size_t n, size_t m, const float *b,
                                                const float *res, size_t ld_res, float *y,
                                                size_t ld_y) {
  if (!b && !res) return 0.0f;
  for (size_t r = 0; r < n; r++) {
    float *y_row = y + r * ld_y;
    const float *res_row = res ? res + r * ld_res : NULL;
    if (b && res_row)
      for (size_t c = 0; c < m; c++) y_row[c] = b[c] + res_row[c];
    else if (b)
      memcpy(y_row, b, m * sizeof *y_row);
    else
      memcpy(y_row, res_row, m * sizeof *y_row);
  }
  return 1.0f;
}

void eellm_cpu_linear_fwd(size_t n, size_t k, size_t m, int transpose_w, const float *x,
                          size_t ld_x, const float *w, size_t ld_w, const float *b,
                          const float *res, size_t ld_res, float *y, size_t ld_y) {
  float beta = bias_and_residual(n, m, b, res, ld_res, y, ld_y);
  eellm_cpu_matmul(n, m, k, transpose_w, 1.0f, x, ld_x, w, ld_w, beta, y, ld_y);
}

void eellm_cpu_linear_fwd_bf16(size_t n, size_t k, size_t m, const float *x, size_t ld_x,
                               const uint16_t *w, size_t ld_w, const float *b, const float *res,
                               size_t ld_res, float *y, size_t ld_y) {
  float beta = bias_and_residual(n, m, b, res, ld_res, y, ld_y);
  thin_matmul_t_bf16(n, m, k, 1.0f, x, ld_x, w, ld_w, beta, y, ld_y);
}

/* Static: a target_clones function's resolver would be exported. */
EELLM_VECTORIZED static void round_to_bf16(size_t n, const float *x, uint16_t *y) {
  for (size_t i = 0; i < n; i++) {
    uint32_t bits;
    memcpy(&bits, &x[i], sizeof bits);
    /* round to nearest, ties to even; a NaN stays a (quiet) NaN */
    uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
    y[i] = x[i] != x[i] ? (uint16_t)((bits >> 16) | 0x40u) : (uint16_t)(rounded >> 16);
  }
}

void eellm_cpu_to_bf16(size_t n, const float *x, uint16_t *y) { round_to_bf16(n, x, y); }

/* Each column's sum runs down the rows in order whatever the vector width: the same bits
 * from every clone. */
EELLM_VECTORIZED static void column_sums(size_t rows, size_t cols, const float *a, size_t ld_a,
                                         float *dst, double *sums) {
  for (size_t c = 0; c < cols; c++) sums[c] = 0;
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) sums[c] += a[r * ld_a + c];
  for (size_t c = 0; c < cols; c++) dst[c] += (float)sums[c];
}

void eellm_cpu_add_column_sums(size_t rows, size_t cols, const float *a, size_t ld_a, float *dst,
                               double *sums) {
  column_sums(rows, cols, a, ld_a, dst, sums);
}

size_t eellm_cpu_linear_bwd_work_bytes(size_t m, int has_db) {
  return has_db ? m * sizeof(double) : 0;
}

void eellm_cpu_linear_bwd(size_t n, size_t k, size_t m, int transpose_w, int beta_dx,
                          const float *x, size_t ld_x, const float *w, size_t ld_w,
                          const float *dy, size_t ld_dy, float *dx, size_t ld_dx, float *dw,
                          size_t ld_dw, float *db, void *work) {
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_w ? CblasNoTrans : CblasTrans, (int)n,
                (int)k, (int)m, 1.0f, dy, (int)ld_dy, w, (int)ld_w, beta_dx ? 1.0f : 0.0f, dx,
                (int)ld_dx);
  if (dw) {
    if (transpose_w)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)k, (int)n, 1.0f, dy,
                  (int)ld_dy, x, (int)ld_x, 1.0f, dw, (int)ld_dw);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)m, (int)n, 1.0f, x,
                  (int)ld_x, dy, (int)ld_dy, 1.0f, dw, (int)ld_dw);
  }
  if (db) eellm_cpu_add_column_sums(n, m, dy, ld_dy, db, work);
}
