/* LayerNorm and RMSNorm over the last dimension, forward and backward, on the
 * GPU: one block per row, statistics in double as on the CPU. */
#include "common.cuh"

/* Mean (0 for rmsnorm) and 1/sqrt(variance or mean square + eps) of row x, in
 * every thread of the block. */
__device__ void row_stats(const float *x, size_t dim, enum eellm_norm_kind kind, float eps,
                          double *mean, double *rstd) {
  double sum = 0;
  if (kind == EELLM_LAYERNORM)
    for (size_t d = threadIdx.x; d < dim; d += blockDim.x) sum += x[d];
  *mean = eellm_block_sum(sum) / dim;
  double sq = 0;
  for (size_t d = threadIdx.x; d < dim; d += blockDim.x) sq += (x[d] - *mean) * (x[d] - *mean);
  *rstd = 1.0 / sqrt(eellm_block_sum(sq) / dim + eps);
}

__global__ void norm_fwd_kernel(size_t n, size_t dim, enum eellm_norm_kind kind, float eps,
                                const float *x, size_t ld_x, const float *gain, const float *bias,
                                float *y, size_t ld_y, float *stats, size_t ld_stats) {
  for (size_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float *x_row = x + r * ld_x;
    float *y_row = y + r * ld_y;
    double mean, rstd;
    row_stats(x_row, dim, kind, eps, &mean, &rstd);
    for (size_t d = threadIdx.x; d < dim; d += blockDim.x) {
      double v = (x_row[d] - mean) * rstd * gain[d];
      y_row[d] = (float)(bias ? v + bias[d] : v);
    }
    if (threadIdx.x == 0) {
      stats[r * ld_stats] = (float)mean;
      stats[r * ld_stats + 1] = (float)rstd;
    }
  }
}

void eellm_cuda_norm_fwd(size_t n, size_t dim, enum eellm_norm_kind kind, float eps, const float *x,
                         size_t ld_x, const float *gain, const float *bias, float *y, size_t ld_y,
                         float *stats, size_t ld_stats, cudaStream_t stream) {
  if (n == 0) return;
  norm_fwd_kernel<<<eellm_row_blocks(n), EELLM_BLOCK, 0, stream>>>(n, dim, kind, eps, x, ld_x, gain,
                                                                   bias, y, ld_y, stats, ld_stats);
  eellm_check_launch("norm_fwd");
}

/* dx of each row: rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gain
 * (rmsnorm: no mean(g) term). */
__global__ void norm_dx_kernel(size_t n, size_t dim, enum eellm_norm_kind kind, int beta_dx,
                               const float *x, size_t ld_x, const float *gain, const float *stats,
                               size_t ld_stats, const float *dy, size_t ld_dy, float *dx,
                               size_t ld_dx) {
  for (size_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float *x_row = x + r * ld_x, *dy_row = dy + r * ld_dy;
    float *dx_row = dx + r * ld_dx;
    double mean = stats[r * ld_stats], rstd = stats[r * ld_stats + 1];
    double sum_g = 0, sum_gx = 0;
    for (size_t d = threadIdx.x; d < dim; d += blockDim.x) {
      double g = (double)dy_row[d] * gain[d];
      sum_g += g;
      sum_gx += g * (x_row[d] - mean) * rstd;
    }
    sum_g = eellm_block_sum(sum_g);
    sum_gx = eellm_block_sum(sum_gx);
    double mean_g = kind == EELLM_LAYERNORM ? sum_g / dim : 0;
    double mean_gx = sum_gx / dim;
    for (size_t d = threadIdx.x; d < dim; d += blockDim.x) {
      double g = (double)dy_row[d] * gain[d];
      double xhat = (x_row[d] - mean) * rstd;
      float v = (float)(rstd * (g - mean_g - xhat * mean_gx));
      dx_row[d] = beta_dx ? dx_row[d] + v : v;
    }
  }
}

/* dy * xhat at (r, col): the terms of dgain's column sums. */
struct gain_grad_term {
  const float *x, *stats, *dy;
  size_t ld_x, ld_stats, ld_dy;
  __device__ double operator()(size_t r, size_t col) const {
    double mean = stats[r * ld_stats], rstd = stats[r * ld_stats + 1];
    return dy[r * ld_dy + col] * (x[r * ld_x + col] - mean) * rstd;
  }
};

/* work: dgain's partial sums, then dbias's. */
size_t eellm_cuda_norm_bwd_work_bytes(size_t n, size_t dim, int has_dgain, int has_dbias) {
  return (has_dgain + has_dbias) * eellm_cuda_column_sums_work_bytes(n, dim);
}

void eellm_cuda_norm_bwd(size_t n, size_t dim, enum eellm_norm_kind kind, int beta_dx,
                         const float *x, size_t ld_x, const float *gain, const float *stats,
                         size_t ld_stats, const float *dy, size_t ld_dy, float *dx, size_t ld_dx,
                         float *dgain, float *dbias, void *work, cudaStream_t stream) {
  if (n == 0 || dim == 0) return;
  norm_dx_kernel<<<eellm_row_blocks(n), EELLM_BLOCK, 0, stream>>>(
      n, dim, kind, beta_dx, x, ld_x, gain, stats, ld_stats, dy, ld_dy, dx, ld_dx);
  eellm_check_launch("norm_bwd");
  char *next = (char *)work;
  if (dgain) {
    gain_grad_term term = {x, stats, dy, ld_x, ld_stats, ld_dy};
    eellm_add_column_sums_of(n, dim, term, dgain, next, stream);
    next += eellm_cuda_column_sums_work_bytes(n, dim);
  }
  if (dbias) eellm_cuda_add_column_sums(n, dim, dy, ld_dy, dbias, next, stream);
}
