/* The greedy next token and the exit confidence on the GPU, one block per row,
 * in double as eellm_cpu_softmax_stats. Sampling (top-k / top-p sorts a row)
 * stays on the CPU. */
#include <math.h>

#include "common.cuh"

/* The better of two (logit, index) candidates: larger logit, then smaller index
 * (the CPU's argmax is the first largest). */
__device__ inline void keep_better(float *z, int *j, float z_other, int j_other) {
  if (z_other > *z || (z_other == *z && j_other < *j)) {
    *z = z_other;
    *j = j_other;
  }
}

/* The first largest entry of z [V] (all finite), in every thread. */
__device__ int block_argmax(const float *z, size_t V) {
  __shared__ float best_z[32];
  __shared__ int best_j[32];
  float bz = -INFINITY;
  int bj = (int)V;
  for (size_t j = threadIdx.x; j < V; j += blockDim.x) keep_better(&bz, &bj, z[j], (int)j);
  for (int offset = 16; offset > 0; offset /= 2) {
    float oz = __shfl_xor_sync(0xffffffffu, bz, offset);
    int oj = __shfl_xor_sync(0xffffffffu, bj, offset);
    keep_better(&bz, &bj, oz, oj);
  }
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
    best_z[threadIdx.x / 32] = bz;
    best_j[threadIdx.x / 32] = bj;
  }
  __syncthreads();
  bz = best_z[0];
  bj = best_j[0];
  for (int w = 1; w < (int)(blockDim.x / 32); w++) keep_better(&bz, &bj, best_z[w], best_j[w]);
  return bj;
}

/* softmax(z * inv_t)'s largest probability, 1 - entropy / log V and log of the
 * normaliser, as eellm_cpu_softmax_stats. */
struct softmax_summary {
  double maxprob, entropy_conf, log_sum;
};

__device__ softmax_summary summarise(const float *z, size_t V, float z_best, double inv_t) {
  double sum = 0, weighted = 0;
  for (size_t j = threadIdx.x; j < V; j += blockDim.x) {
    double shifted = ((double)z[j] - z_best) * inv_t, e = exp(shifted);
    sum += e;
    weighted += e * shifted;
  }
  sum = eellm_block_sum(sum);
  weighted = eellm_block_sum(weighted);
  double entropy = log(sum) - weighted / sum;
  return {1 / sum, V > 1 ? 1 - entropy / log((double)V) : 1, log(sum)};
}

__global__ void next_token_kernel(size_t M, size_t V, const float *logits, size_t ld,
                                  eellm_sampling s, eellm_token_choice *choices) {
  for (size_t m = blockIdx.x; m < M; m += gridDim.x) {
    const float *z = logits + m * ld;
    int non_finite = 0;
    for (size_t j = threadIdx.x; j < V; j += blockDim.x) non_finite += !isfinite(z[j]);
    if (eellm_block_sum(non_finite) > 0) { /* no token from garbage: the caller stops on -1 */
      if (threadIdx.x == 0) choices[m] = {-1, 0.0f, NAN, NAN, NAN};
      continue;
    }
    int best = block_argmax(z, V);
    softmax_summary st = summarise(z, V, z[best], 1.0 / s.exit_temperature);
    softmax_summary raw = s.exit_temperature == 1 ? st : summarise(z, V, z[best], 1.0);
    if (threadIdx.x == 0)
      choices[m] = {best, (float)(s.entropy_rule ? st.entropy_conf : st.maxprob),
                    (float)-st.log_sum, (float)-raw.log_sum, (float)raw.maxprob};
  }
}

void eellm_cuda_next_token_greedy(size_t M, size_t V, const float *logits, size_t ld,
                                  const struct eellm_sampling *s,
                                  struct eellm_token_choice *choices, cudaStream_t stream) {
  if (M == 0) return;
  next_token_kernel<<<eellm_row_blocks(M), EELLM_BLOCK, 0, stream>>>(M, V, logits, ld, *s, choices);
  eellm_check_launch("next_token");
}
