/* Gradient sums of squares, the global clip scale, and the AdamW update with
 * PyTorch's torch.optim.AdamW semantics. */
#include <math.h>

#include "kernels.h"
#include "vector.h"

EELLM_VECTORIZED static double row_sumsq(const float *row, size_t cols) {
  return eellm_sum_squares(row, cols, 0);
}

double eellm_cpu_sumsq(size_t rows, size_t cols, const float *g, size_t ld) {
  double sum = 0;
  for (size_t r = 0; r < rows; r++) sum += row_sumsq(g + r * ld, cols);
  return sum;
}

void eellm_cpu_clip_scale(double total_sumsq, float max_norm, float *clip) {
  double norm = sqrt(total_sumsq);
  double scale = 1;
  if (max_norm > 0) scale = fmin(1.0, max_norm / (norm + 1e-6));
  /* A NaN or inf norm (or one past float's range) is a step to skip: the AdamW
   * kernels see the non-finite clip[0] and change nothing. */
  if (!isfinite((float)norm)) scale = 0;
  clip[0] = (float)norm;
  clip[1] = (float)scale;
}

struct eellm_adamw_consts eellm_cpu_adamw_consts(const struct eellm_adamw_step *hp) {
  double bias1 = 1 - pow(hp->beta1, hp->step), bias2 = 1 - pow(hp->beta2, hp->step);
  return (struct eellm_adamw_consts){
      .beta1 = hp->beta1,
      .beta2 = hp->beta2,
      .eps = hp->eps,
      .decay = (float)(1 - (double)hp->lr * hp->weight_decay),
      .step_size = (float)(hp->lr / bias1),
      .bias2_sqrt = (float)sqrt(bias2),
  };
}

/* A row of distinct tensors (weights, gradient, moments), at the vector units' width. */
EELLM_VECTORIZED static void adamw_elements(float *restrict p, const float *restrict g,
                                            float *restrict m, float *restrict v, size_t n,
                                            const struct eellm_adamw_consts *consts,
                                            float grad_scale) {
  const struct eellm_adamw_consts k = *consts;
#pragma omp simd
  for (size_t i = 0; i < n; i++) {
    float grad = g[i] * grad_scale;
    m[i] = k.beta1 * m[i] + (1 - k.beta1) * grad;
    v[i] = k.beta2 * v[i] + (1 - k.beta2) * grad * grad;
    float denom = sqrtf(v[i]) / k.bias2_sqrt + k.eps;
    p[i] = p[i] * k.decay - k.step_size * m[i] / denom;
  }
}

void eellm_cpu_adamw(size_t rows, size_t cols, float *p, size_t ld_p, const float *g,
                     size_t ld_g, float *m, size_t ld_m, float *v, size_t ld_v,
                     const struct eellm_adamw_step *hp, float grad_scale) {
  struct eellm_adamw_consts k = eellm_cpu_adamw_consts(hp);
  for (size_t r = 0; r < rows; r++)
    adamw_elements(p + r * ld_p, g + r * ld_g, m + r * ld_m, v + r * ld_v, cols, &k, grad_scale);
}
