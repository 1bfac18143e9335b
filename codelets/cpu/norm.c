/* LayerNorm and RMSNorm over the last dimension, forward and backward
 * (torch.nn.LayerNorm with biased variance; RMSNorm as x * rsqrt(mean(x^2) + eps) * gain). */
#include <math.h>

#include "kernels.h"

/* Mean (0 for rmsnorm) and 1/sqrt(variance or mean square + eps) of one row, in double. */
static void row_stats(const float *x, size_t dim, enum eellm_norm_kind kind, float eps,
                      double *mean, double *rstd) {
  double sum = 0;
  if (kind == EELLM_LAYERNORM)
    for (size_t d = 0; d < dim; d++) sum += x[d];
  *mean = sum / dim;
  double sq = 0;
  for (size_t d = 0; d < dim; d++) sq += (x[d] - *mean) * (x[d] - *mean);
  *rstd = 1.0 / sqrt(sq / dim + eps);
}

void eellm_cpu_norm_fwd(size_t n, size_t dim, enum eellm_norm_kind kind, float eps,
                        const float *x, size_t ld_x, const float *gain, const float *bias,
                        float *y, size_t ld_y, float *stats, size_t ld_stats) {
  for (size_t r = 0; r < n; r++) {
    const float *x_row = x + r * ld_x;
    float *y_row = y + r * ld_y;
    double mean, rstd;
    row_stats(x_row, dim, kind, eps, &mean, &rstd);
    for (size_t d = 0; d < dim; d++) {
      double v = (x_row[d] - mean) * rstd * gain[d];
      y_row[d] = (float)(bias ? v + bias[d] : v);
    }
    stats[r * ld_stats] = (float)mean;
    stats[r * ld_stats + 1] = (float)rstd;
  }
}

/* dx of one row: rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gain;
 * rmsnorm has no mean to subtract, so its mean(g) term is absent. */
static void row_dx(const float *x, const float *dy, const float *gain, size_t dim,
                   enum eellm_norm_kind kind, double mean, double rstd, int beta_dx, float *dx) {
  double sum_g = 0, sum_gx = 0;
  for (size_t d = 0; d < dim; d++) {
    double g = (double)dy[d] * gain[d];
    sum_g += g;
    sum_gx += g * (x[d] - mean) * rstd;
  }
  double mean_g = kind == EELLM_LAYERNORM ? sum_g / dim : 0;
  double mean_gx = sum_gx / dim;
  for (size_t d = 0; d < dim; d++) {
    double g = (double)dy[d] * gain[d];
    double xhat = (x[d] - mean) * rstd;
    float v = (float)(rstd * (g - mean_g - xhat * mean_gx));
    dx[d] = beta_dx ? dx[d] + v : v;
  }
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
    double mean = stats[r * ld_stats], rstd = stats[r * ld_stats + 1];
    row_dx(x_row, dy_row, gain, dim, kind, mean, rstd, beta_dx, dx + r * ld_dx);
    if (dgain)
      for (size_t d = 0; d < dim; d++) gain_sums[d] += dy_row[d] * (x_row[d] - mean) * rstd;
  }
  if (dgain)
    for (size_t d = 0; d < dim; d++) dgain[d] += (float)gain_sums[d];
  if (dbias) eellm_cpu_add_column_sums(n, dim, dy, ld_dy, dbias, gain_sums + dim);
}
