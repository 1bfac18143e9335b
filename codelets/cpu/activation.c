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

EELLM_VECTORIZED void eellm_cpu_activation_fwd(size_t n, size_t width, enum eellm_activation act,
                                               const float *h, size_t ld_h, float *a, size_t ld_a) {
  for (size_t r = 0; r < n; r++) {
    const float *h_row = h + r * ld_h;
    float *a_row = a + r * ld_a;
    if (act == EELLM_GELU) {
      for (size_t f = 0; f < width; f++) a_row[f] = gelu(h_row[f]);
    } else {
      const float *gate = h_row, *up = h_row + width;
      for (size_t f = 0; f < width; f++) a_row[f] = gate[f] * sigmoid(gate[f]) * up[f];
    }
  }
}

EELLM_VECTORIZED void eellm_cpu_activation_bwd(size_t n, size_t width, enum eellm_activation act,
                                               int beta_dx, const float *h, size_t ld_h,
                                               const float *da, size_t ld_da, float *dh,
                                               size_t ld_dh) {
  for (size_t r = 0; r < n; r++) {
    const float *h_row = h + r * ld_h, *da_row = da + r * ld_da;
    float *dh_row = dh + r * ld_dh;
    if (act == EELLM_GELU) {
      for (size_t f = 0; f < width; f++)
        store(&dh_row[f], da_row[f] * gelu_grad(h_row[f]), beta_dx);
    } else {
      const float *gate = h_row, *up = h_row + width;
      float *dgate = dh_row, *dup = dh_row + width;
      for (size_t f = 0; f < width; f++) {
        float s = sigmoid(gate[f]);
        float silu = gate[f] * s;
        store(&dgate[f], da_row[f] * up[f] * s * (1.0f + gate[f] * (1.0f - s)), beta_dx);
        store(&dup[f], da_row[f] * silu, beta_dx);
      }
    }
  }
}
