/* MLP activations, forward and backward: GELU (tanh approximation, as
 * torch.nn.functional.gelu(x, approximate='tanh')) and SwiGLU (silu(gate) * up). */
#include <math.h>

#include "kernels.h"
#include "vector.h"

#define GELU_BETA 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f

static inline float sigmoid(float x) { return 1.0f / (1.0f + eellm_vexpf(-x)); }

/* 0.5 (1 + tanh(u)) = sigmoid(2u): one expf instead of the much slower tanhf. */
static inline float gelu(float x) {
  return x * sigmoid(2.0f * GELU_BETA * (x + GELU_KAPPA * x * x * x));
}

/* With s = sigmoid(2u): d/dx [x s] = s + x * 2 s (1 - s) * du/dx. */
static inline float gelu_grad(float x) {
  float s = sigmoid(2.0f * GELU_BETA * (x + GELU_KAPPA * x * x * x));
  float dinner = GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x * x);
  return s + 2.0f * x * s * (1.0f - s) * dinner;
}

/* Writes or adds v: with beta_dx == 0 the buffer may hold garbage (mode W), even NaN. */
static inline void store(float *dst, float v, int beta_dx) { *dst = beta_dx ? *dst + v : v; }

/* One row's work, compiled per vector width (EELLM_VECTORIZED). */
EELLM_VECTORIZED static void gelu_row(size_t width, const float *h, float *a) {
  for (size_t f = 0; f < width; f++) a[f] = gelu(h[f]);
}

EELLM_VECTORIZED static void swiglu_row(size_t width, const float *gate, const float *up,
                                        float *a) {
  for (size_t f = 0; f < width; f++) a[f] = gate[f] * sigmoid(gate[f]) * up[f];
}

EELLM_VECTORIZED static void gelu_grad_row(size_t width, int beta_dx, const float *h,
                                           const float *da, float *dh) {
  for (size_t f = 0; f < width; f++) store(&dh[f], da[f] * gelu_grad(h[f]), beta_dx);
}

EELLM_VECTORIZED static void swiglu_grad_row(size_t width, int beta_dx, const float *gate,
                                             const float *up, const float *da, float *dgate,
                                             float *dup) {
  for (size_t f = 0; f < width; f++) {
    float s = sigmoid(gate[f]);
    float silu = gate[f] * s;
    store(&dgate[f], da[f] * up[f] * s * (1.0f + gate[f] * (1.0f - s)), beta_dx);
    store(&dup[f], da[f] * silu, beta_dx);
  }
}

void eellm_cpu_activation_fwd(size_t n, size_t width, enum eellm_activation act, const float *h,
                              size_t ld_h, float *a, size_t ld_a) {
  for (size_t r = 0; r < n; r++) {
    const float *h_row = h + r * ld_h;
    if (act == EELLM_GELU)
      gelu_row(width, h_row, a + r * ld_a);
    else
      swiglu_row(width, h_row, h_row + width, a + r * ld_a);
  }
}

void eellm_cpu_activation_bwd(size_t n, size_t width, enum eellm_activation act, int beta_dx,
                              const float *h, size_t ld_h, const float *da, size_t ld_da, float *dh,
                              size_t ld_dh) {
  for (size_t r = 0; r < n; r++) {
    const float *h_row = h + r * ld_h, *da_row = da + r * ld_da;
    float *dh_row = dh + r * ld_dh;
    if (act == EELLM_GELU)
      gelu_grad_row(width, beta_dx, h_row, da_row, dh_row);
    else
      swiglu_grad_row(width, beta_dx, h_row, h_row + width, da_row, dh_row, dh_row + width);
  }
}
