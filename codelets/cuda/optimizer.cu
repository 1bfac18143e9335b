/* Gradient sums of squares, the global clip scale and AdamW on the GPU. The
 * sums have a fixed order (block partials, then one block), so the norm is the
 * same every run; the clip scale adds the tensors' sums in the CPU's order. */
#include <math.h>

#include "common.cuh"

#define SUMSQ_BLOCKS 256 /* partial sums of a tensor's squares */

size_t eellm_cuda_sumsq_work_bytes(void) { return SUMSQ_BLOCKS * sizeof(double); }

__global__ void sumsq_partial_kernel(size_t rows, size_t cols, const float *g, size_t ld,
                                     double *partial) {
  double sum = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < rows * cols;
       i += (size_t)gridDim.x * blockDim.x) {
    double x = g[(i / cols) * ld + i % cols];
    sum += x * x;
  }
  sum = eellm_block_sum(sum);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

__global__ void sum_partials_kernel(const double *partial, size_t n, double *total) {
  double sum = 0;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) sum += partial[i];
  sum = eellm_block_sum(sum);
  if (threadIdx.x == 0) *total = sum;
}

void eellm_cuda_sumsq(size_t rows, size_t cols, const float *g, size_t ld, double *sumsq,
                      void *work, cudaStream_t stream) {
  double *partial = (double *)work;
  sumsq_partial_kernel<<<SUMSQ_BLOCKS, EELLM_BLOCK, 0, stream>>>(rows, cols, g, ld, partial);
  eellm_check_launch("sumsq");
  sum_partials_kernel<<<1, EELLM_BLOCK, 0, stream>>>(partial, SUMSQ_BLOCKS, sumsq);
  eellm_check_launch("sumsq (total)");
}

/* Tensors' sums per launch: the pointers travel in the kernel's parameters. */
#define CLIP_CHUNK 64

struct sumsq_chunk {
  const double *sumsq[CLIP_CHUNK];
  int n;
};

/* total (one double) = (first ? 0 : total) + the chunk's sums in order; with
 * clip, the last chunk also writes clip = (norm, scale) as eellm_cpu_clip_scale. */
__global__ void clip_chunk_kernel(sumsq_chunk chunk, int first, double *total, float max_norm,
                                  float *clip) {
  double sum = first ? 0 : *total;
  for (int i = 0; i < chunk.n; i++) sum += *chunk.sumsq[i];
  *total = sum;
  if (!clip) return;
  double norm = sqrt(sum), scale = 1;
  if (max_norm > 0) scale = fmin(1.0, max_norm / (norm + 1e-6));
  if (!isfinite((float)norm)) scale = 0; /* a step to skip: see eellm_cuda_adamw */
  clip[0] = (float)norm;
  clip[1] = (float)scale;
}

void eellm_cuda_clip_scale(size_t n, const double *const *sumsqs, float max_norm, float *clip,
                           void *work, cudaStream_t stream) {
  size_t done = 0;
  do {
    sumsq_chunk chunk;
    chunk.n = (int)(n - done < CLIP_CHUNK ? n - done : CLIP_CHUNK);
    for (int i = 0; i < chunk.n; i++) chunk.sumsq[i] = sumsqs[done + i];
    int last = done + chunk.n == n;
    clip_chunk_kernel<<<1, 1, 0, stream>>>(chunk, done == 0, (double *)work, max_norm,
                                           last ? clip : NULL);
    eellm_check_launch("clip_scale");
    done += chunk.n;
  } while (done < n);
}

__global__ void adamw_kernel(size_t rows, size_t cols, float *p, size_t ld_p, const float *g,
                             size_t ld_g, float *m, size_t ld_m, float *v, size_t ld_v,
                             eellm_adamw_consts k, const float *clip) {
  if (clip && !isfinite(clip[0])) return; /* a non-finite gradient norm: skip the step */
  float grad_scale = clip ? clip[1] : 1.0f;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < rows * cols;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / cols, c = i % cols;
    float grad = g[r * ld_g + c] * grad_scale;
    float mi = k.beta1 * m[r * ld_m + c] + (1 - k.beta1) * grad;
    float vi = k.beta2 * v[r * ld_v + c] + (1 - k.beta2) * grad * grad;
    m[r * ld_m + c] = mi;
    v[r * ld_v + c] = vi;
    float denom = sqrtf(vi) / k.bias2_sqrt + k.eps;
    p[r * ld_p + c] = p[r * ld_p + c] * k.decay - k.step_size * mi / denom;
  }
}

void eellm_cuda_adamw(size_t rows, size_t cols, float *p, size_t ld_p, const float *g, size_t ld_g,
                      float *m, size_t ld_m, float *v, size_t ld_v,
                      const struct eellm_adamw_consts *k, const float *clip, cudaStream_t stream) {
  if (rows * cols == 0) return;
  adamw_kernel<<<eellm_blocks(rows * cols), EELLM_BLOCK, 0, stream>>>(rows, cols, p, ld_p, g, ld_g,
                                                                      m, ld_m, v, ld_v, *k, clip);
  eellm_check_launch("adamw");
}
