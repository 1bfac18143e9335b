/* Softmax cross-entropy with a loss mask, a temperature and the optional
 * confidence weight, on the GPU: one block per row, the softmax denominator in
 * double as on the CPU, and the loss summed over rows in a fixed order. */
#include <math.h>

#include "common.cuh"

/* Row max and the sum over j of exp((z_j - max) / T) in double, in every thread. */
struct row_softmax {
  float max;
  double sum;
};

__device__ inline row_softmax softmax_of(const float *z, size_t V, float inv_temp) {
  float max = -INFINITY;
  for (size_t j = threadIdx.x; j < V; j += blockDim.x) max = fmaxf(max, z[j]);
  max = eellm_block_max(max);
  double sum = 0;
  for (size_t j = threadIdx.x; j < V; j += blockDim.x) sum += expf((z[j] - max) * inv_temp);
  return {max, eellm_block_sum(sum)};
}

__device__ inline bool valid_target(int32_t t, size_t V) { return t >= 0 && (size_t)t < V; }

/* row_loss [r] = mask * c * -log softmax(z / T)[target] (0 for masked-out rows,
 * NaN for a target outside the vocabulary). */
__global__ void xent_rows_kernel(size_t n, size_t V, const float *logits, size_t ld,
                                 const int32_t *targets, const float *mask, float temperature,
                                 int dynamic, double *row_loss) {
  for (size_t r = blockIdx.x; r < n; r += gridDim.x) {
    if (mask[r] == 0) {
      if (threadIdx.x == 0) row_loss[r] = 0;
      continue;
    }
    const float *z = logits + r * ld;
    row_softmax sm = softmax_of(z, V, 1.0f / temperature);
    if (threadIdx.x != 0) continue;
    if (!valid_target(targets[r], V)) {
      row_loss[r] = NAN;
      continue;
    }
    double loss = log(sm.sum) + ((double)sm.max - z[targets[r]]) / temperature;
    if (dynamic) loss /= sm.sum; /* the largest probability is exp(0) / sum */
    row_loss[r] = mask[r] * loss;
  }
}

/* stats = (sum of row_loss, sum of mask), in one block. */
__global__ void xent_total_kernel(size_t n, const double *row_loss, const float *mask,
                                  double *stats) {
  double loss = 0, count = 0;
  for (size_t r = threadIdx.x; r < n; r += blockDim.x) {
    loss += row_loss[r];
    count += mask[r];
  }
  loss = eellm_block_sum(loss);
  count = eellm_block_sum(count);
  if (threadIdx.x == 0) {
    stats[0] = loss;
    stats[1] = count;
  }
}

/* One double per row (at least one, so that the task always has its scratch). */
size_t eellm_cuda_xent_fwd_work_bytes(size_t n) { return (n ? n : 1) * sizeof(double); }

void eellm_cuda_xent_fwd(size_t n, size_t V, const float *logits, size_t ld, const int32_t *targets,
                         const float *mask, float temperature, int dynamic, double *stats,
                         void *work, cudaStream_t stream) {
  if (n > 0) {
    xent_rows_kernel<<<eellm_row_blocks(n), EELLM_BLOCK, 0, stream>>>(
        n, V, logits, ld, targets, mask, temperature, dynamic, (double *)work);
    eellm_check_launch("xent_fwd");
  }
  xent_total_kernel<<<1, EELLM_BLOCK, 0, stream>>>(n, (const double *)work, mask, stats);
  eellm_check_launch("xent_fwd (total)");
}

/* dz = coef * c * (softmax(z / T) - onehot(target)), coef = scale * mask / (T * count);
 * zero where the mask or the count is 0, NaN for a target outside the vocabulary. */
__global__ void xent_bwd_kernel(size_t n, size_t V, const float *logits, size_t ld,
                                const int32_t *targets, const float *mask, const double *stats,
                                float scale, float temperature, int dynamic, float *dlogits,
                                size_t ld_d) {
  double count = stats[1];
  for (size_t r = blockIdx.x; r < n; r += gridDim.x) {
    float *dz = dlogits + r * ld_d;
    if (mask[r] == 0 || count == 0 || !valid_target(targets[r], V)) {
      float fill = mask[r] == 0 || count == 0 ? 0.0f : NAN;
      for (size_t j = threadIdx.x; j < V; j += blockDim.x) dz[j] = fill;
      continue;
    }
    const float *z = logits + r * ld;
    float inv_temp = 1.0f / temperature;
    row_softmax sm = softmax_of(z, V, inv_temp);
    double coef = (double)scale * mask[r] / ((double)temperature * count);
    if (dynamic) coef /= sm.sum;
    float prob_coef = (float)(coef / sm.sum);
    for (size_t j = threadIdx.x; j < V; j += blockDim.x) {
      /* Rounded as the CPU's dz[j] = e * prob_coef, then dz[target] -= coef. */
      float v = __fmul_rn(expf((z[j] - sm.max) * inv_temp), prob_coef);
      dz[j] = j == (size_t)targets[r] ? v - (float)coef : v;
    }
  }
}

void eellm_cuda_xent_bwd(size_t n, size_t V, const float *logits, size_t ld, const int32_t *targets,
                         const float *mask, const double *stats, float scale, float temperature,
                         int dynamic, float *dlogits, size_t ld_d, cudaStream_t stream) {
  if (n == 0) return;
  xent_bwd_kernel<<<eellm_row_blocks(n), EELLM_BLOCK, 0, stream>>>(
      n, V, logits, ld, targets, mask, stats, scale, temperature, dynamic, dlogits, ld_d);
  eellm_check_launch("xent_bwd");
}
