/* Linear layer y = x @ W (+ b) (+ residual), forward and backward, on cblas_sgemm,
 * and the column sums that make bias gradients. */
#include <cblas.h>

#include "kernels.h"

void eellm_cpu_matmul(size_t n, size_t m, size_t k, int transpose_b, float alpha, const float *a,
                      size_t ld_a, const float *b, size_t ld_b, float beta, float *c,
                      size_t ld_c) {
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

/* Bias and residual are written first and the product added on top. */
void eellm_cpu_linear_fwd(size_t n, size_t k, size_t m, int transpose_w, const float *x,
                          size_t ld_x, const float *w, size_t ld_w, const float *b,
                          const float *res, size_t ld_res, float *y, size_t ld_y) {
  if (b || res) {
    for (size_t r = 0; r < n; r++) {
      float *y_row = y + r * ld_y;
      for (size_t c = 0; c < m; c++)
        y_row[c] = (b ? b[c] : 0.0f) + (res ? res[r * ld_res + c] : 0.0f);
    }
  }
  eellm_cpu_matmul(n, m, k, transpose_w, 1.0f, x, ld_x, w, ld_w, (b || res) ? 1.0f : 0.0f, y, ld_y);
}

void eellm_cpu_add_column_sums(size_t rows, size_t cols, const float *a, size_t ld_a, float *dst,
                               double *sums) {
  for (size_t c = 0; c < cols; c++) sums[c] = 0;
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) sums[c] += a[r * ld_a + c];
  for (size_t c = 0; c < cols; c++) dst[c] += (float)sums[c];
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
