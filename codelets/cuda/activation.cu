/* MLP activations on the GPU, forward and backward, with the CPU kernels'
 * formulas: GELU in its tanh form written with a sigmoid, SwiGLU. */
#include "common.cuh"

#define GELU_BETA 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* 0.5 (1 + tanh(u)) = sigmoid(2u). */
__device__ inline float gelu(float x) {
  return x * sigmoid(2.0f * GELU_BETA * (x + GELU_KAPPA * x * x * x));
}

/* With s = sigmoid(2u): d/dx [x s] = s + x * 2 s (1 - s) * du/dx. */
__device__ inline float gelu_grad(float x) {
  float s = sigmoid(2.0f * GELU_BETA * (x + GELU_KAPPA * x * x * x));
  float dinner = GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x * x);
  return s + 2.0f * x * s * (1.0f - s) * dinner;
}

/* Writes or adds v: with beta_dx == 0 the buffer may hold garbage, even NaN. */
__device__ inline void store(float *dst, float v, int beta_dx) { *dst = beta_dx ? *dst + v : v; }

__global__ void activation_fwd_kernel(size_t n, size_t width, enum eellm_activation act,
                                      const float *h, size_t ld_h, float *a, size_t ld_a) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * width;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / width, f = i % width;
    const float *h_row = h + r * ld_h;
    if (act == EELLM_GELU) {
      a[r * ld_a + f] = gelu(h_row[f]);
    } else {
      float gate = h_row[f], up = h_row[width + f];
      a[r * ld_a + f] = gate * sigmoid(gate) * up;
    }
  }
}

__global__ void activation_bwd_kernel(size_t n, size_t width, enum eellm_activation act,
                                      int beta_dx, const float *h, size_t ld_h, const float *da,
                                      size_t ld_da, float *dh, size_t ld_dh) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * width;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / width, f = i % width;
    const float *h_row = h + r * ld_h;
    float g = da[r * ld_da + f], *dh_row = dh + r * ld_dh;
    if (act == EELLM_GELU) {
      store(&dh_row[f], g * gelu_grad(h_row[f]), beta_dx);
    } else {
      float gate = h_row[f], up = h_row[width + f];
      float s = sigmoid(gate);
      store(&dh_row[f], g * up * s * (1.0f + gate * (1.0f - s)), beta_dx);
      store(&dh_row[width + f], g * (gate * s), beta_dx);
    }
  }
}

void eellm_cuda_activation_fwd(size_t n, size_t width, enum eellm_activation act, const float *h,
                               size_t ld_h, float *a, size_t ld_a, cudaStream_t stream) {
  if (n * width == 0) return;
  activation_fwd_kernel<<<eellm_blocks(n * width), EELLM_BLOCK, 0, stream>>>(n, width, act, h, ld_h,
                                                                             a, ld_a);
  eellm_check_launch("activation_fwd");
}

void eellm_cuda_activation_bwd(size_t n, size_t width, enum eellm_activation act, int beta_dx,
                               const float *h, size_t ld_h, const float *da, size_t ld_da,
                               float *dh, size_t ld_dh, cudaStream_t stream) {
  if (n * width == 0) return;
  activation_bwd_kernel<<<eellm_blocks(n * width), EELLM_BLOCK, 0, stream>>>(
      n, width, act, beta_dx, h, ld_h, da, ld_da, dh, ld_dh);
  eellm_check_launch("activation_bwd");
}
