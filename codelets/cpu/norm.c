/* LayerNorm and RMSNorm over the last dimension, forward and backward
 * (torch.nn.LayerNorm with biased variance; RMSNorm as x * rsqrt(mean(x^2) + eps) * gain).
 * Each row's sums are float partial sums of EELLM_SUM_BLOCK terms added in double, on the
 * vector units (EELLM_VECTORIZED); the elementwise passes are in float. */
#include <math.h>

#include "kernels.h"
#include "vector.h"

/* Sum over d of x[d]. */
EELLM_VECTORIZED static double row_sum(const float *x, size_t dim) {
  double sum = 0;
  for (size_t d0 = 0; d0 < dim; d0 += EELLM_SUM_BLOCK) {
    size_t end = d0 + EELLM_SUM_BLOCK < dim ? d0 + EELLM_SUM_BLOCK : dim;
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (size_t d = d0; d < end; d++) part += x[d];
    sum += part;
  }
  return sum;
}

EELLM_VECTORIZED static double row_sum_squares(const float *x, size_t dim, float mean) {
  return eellm_sum_squares(x, dim, mean);
}

/* y = (x - mean) * rstd * gain (+ bias). */
EELLM_VECTORIZED static void row_normalize(const float *x, size_t dim, float mean, float rstd,
                                           const float *gain, const float *bias, float *y) {
  if (bias) {
    for (size_t d = 0; d < dim; d++) y[d] = (x[d] - mean) * rstd * gain[d] + bias[d];
  } else {
    for (size_t d = 0; d < dim; d++) y[d] = (x[d] - mean) * rstd * gain[d];
  }
}

void eellm_cpu_norm_fwd(size_t n, size_t dim, enum eellm_norm_kind kind, float eps,
                        const float *x, size_t ld_x, const float *gain, const float *bias,
                        float *y, size_t ld_y, float *stats, size_t ld_stats) {
  for (size_t r = 0; r < n; r++) {
    const float *x_row = x + r * ld_x;
    float mean = kind == EELLM_LAYERNORM ? (float)(row_sum(x_row, dim) / dim) : 0;
    float rstd = (float)(1.0 / sqrt(row_sum_squares(x_row, dim, mean) / dim + eps));
    row_normalize(x_row, dim, mean, rstd, gain, bias, y + r * ld_y);
    stats[r * ld_stats] = mean;
    stats[r * ld_stats + 1] = rstd;
  }
}

/* The row's sums of g = dy * gain and of g * xhat, xhat = (x - mean) * rstd. */
EELLM_VECTORIZED static void row_grad_sums(const float *x, const float *dy, const float *gain,
                                           size_t dim, float mean, float rstd, double *sum_g,
                                           double *sum_gx) {
  *sum_g = *sum_gx = 0;
  for (size_t d0 = 0; d0 < dim; d0 += EELLM_SUM_BLOCK) {
    size_t end = d0 + EELLM_SUM_BLOCK < dim ? d0 + EELLM_SUM_BLOCK : dim;
    float part_g = 0, part_gx = 0;
#pragma omp simd reduction(+ : part_g, part_gx)
    for (size_t d = d0; d < end; d++) {
      float g = dy[d] * gain[d];
      part_g += g;
      part_gx += g * (x[d] - mean) * rstd;
    }
    *sum_g += part_g;
    *sum_gx += part_gx;
  }
}

/* dx (written, or added with beta_dx) = rstd * (g - mean_g - xhat * mean_gx). */
EELLM_VECTORIZED static void row_dx_store(const float *x, const float *dy, const float *gain,
                                          size_t dim, float mean, float rstd, float mean_g,
                                          float mean_gx, int beta_dx, float *dx) {
  if (beta_dx) {
    for (size_t d = 0; d < dim; d++)
      dx[d] += rstd * (dy[d] * gain[d] - mean_g - (x[d] - mean) * rstd * mean_gx);
  } else {
    for (size_t d = 0; d < dim; d++)
      dx[d] = rstd * (dy[d] * gain[d] - mean_g - (x[d] - mean) * rstd * mean_gx);
  }
}

/* dx of one row: rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gain;
 * rmsnorm has no mean to subtract, so its mean(g) term is absent. */
static void row_dx(const float *x, const float *dy, const float *gain, size_t dim,
                   enum eellm_norm_kind kind, float mean, float rstd, int beta_dx, float *dx) {
  double sum_g, sum_gx;
  row_grad_sums(x, dy, gain, dim, mean, rstd, &sum_g, &sum_gx);
  float mean_g = kind == EELLM_LAYERNORM ? (float)(sum_g / dim) : 0;
  row_dx_store(x, dy, gain, dim, mean, rstd, mean_g, (float)(sum_gx / dim), beta_dx, dx);
}

/* sums [dim] += dy * xhat, in double across rows. */
EELLM_VECTORIZED static void add_gain_terms(const float *x, const float *dy, size_t dim, float mean,
                                            float rstd, double *sums) {
  for (size_t d = 0; d < dim; d++) sums[d] += dy[d] * ((x[d] - mean) * rstd);
}

/* work: dim doubles for dgain's sums, then dim for dbias's. */
size_t eellm_cpu_norm_bwd_work_bytes(size_t dim, int has_dgain, int has_dbias) {
  return (has_dgain || has_dbias) ? 2 * dim * sizeof(double) : 0;
}

void eellm_cpu_norm_bwd(size_t n, size_t dim, enum eellm_norm_kind kind, int beta_dx,
                        const float *x, size_t ld_x, const float *gain, const float *stats,
                        size_t ld_stats, const float *dy, size_t ld_dy, float *dx, size_t ld_dx,
                        float *dgain, float *dbias, void *work) {
  double *gain_sums = work;
  if (dgain)
    for (size_t d = 0; d < dim; d++) gain_sums[d] = 0;
  for (size_t r = 0; r < n; r++) {
    const float *x_row = x + r * ld_x, *dy_row = dy + r * ld_dy;
    float mean = stats[r * ld_stats], rstd = stats[r * ld_stats + 1];
    row_dx(x_row, dy_row, gain, dim, kind, mean, rstd, beta_dx, dx + r * ld_dx);
    if (dgain) add_gain_terms(x_row, dy_row, dim, mean, rstd, gain_sums);
  }
  if (dgain)
    for (size_t d = 0; d < dim; d++) dgain[d] += (float)gain_sums[d];
  if (dbias) eellm_cpu_add_column_sums(n, dim, dy, ld_dy, dbias, gain_sums + dim);
}
