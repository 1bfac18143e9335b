/* Softmax cross-entropy over the vocabulary with a loss mask and a temperature,
 * optionally weighted per row by the softmax's largest probability (EE-LLM's
 * dynamic exit-loss weight, detached); whole rows, or vocabulary-parallel.
 *
 * Vocabulary-parallel (Megatron-LM): each tensor-parallel rank holds the logits
 * of its part of the vocabulary, and the ranks exchange three numbers per row,
 * never the logits. In the temperature-scaled domain u = z / T a row's
 * statistics are (max_j u_j, sum_j exp(u_j - max), u_target, 0 where the
 * target is another part's); the parts' statistics combine into the whole
 * row's (collective.c), from which the loss and each part's gradient follow,
 * with the same row helpers as whole rows. */
#include <math.h>

#include "kernels.h"
#include "vector.h"

/* The loops are `omp simd` reductions (-fopenmp-simd: vectorised without OpenMP's runtime);
 * sums add float partial sums of EELLM_SUM_BLOCK terms in double. Their order is fixed for a given
 * clone (EELLM_VECTORIZED). */

EELLM_VECTORIZED static float row_max(const float *z, size_t V) {
  float max = z[0];
#pragma omp simd reduction(max : max)
  for (size_t j = 1; j < V; j++) max = z[j] > max ? z[j] : max;
  return max;
}

/* Sum over j of exp((z_j - max) / T): the softmax denominator, shifted by max / T; each
 * term also stored in e [V] unless e is NULL. */
EELLM_VECTORIZED static double shifted_exp_sum(const float *z, size_t V, float max, float inv_temp,
                                               float *e) {
  double sum = 0;
  for (size_t j0 = 0; j0 < V; j0 += EELLM_SUM_BLOCK) {
    size_t end = j0 + EELLM_SUM_BLOCK < V ? j0 + EELLM_SUM_BLOCK : V;
    float part = 0;
    if (e) {
#pragma omp simd reduction(+ : part)
      for (size_t j = j0; j < end; j++) {
        e[j] = eellm_vexpf((z[j] - max) * inv_temp);
        part += e[j];
      }
    } else {
#pragma omp simd reduction(+ : part)
      for (size_t j = j0; j < end; j++) part += eellm_vexpf((z[j] - max) * inv_temp);
    }
    sum += part;
  }
  return sum;
}

/* A row's loss from its statistics: -log softmax(z / T)[t] = log(sum) + (max - z_t) / T,
 * sum = sum_j exp((z_j - max) / T); with `dynamic` times the largest probability,
 * exp(0) / sum: the confidence weight. */
static double row_loss(double sum, float max, float z_target, float temperature, int dynamic) {
  double loss = log(sum) + ((double)max - z_target) / temperature;
  return dynamic ? loss / sum : loss;
}

void eellm_cpu_xent_fwd(size_t n, size_t V, const float *logits, size_t ld, const int32_t *targets,
                        const float *mask, float temperature, int dynamic, double *stats) {
  float inv_temp = 1.0f / temperature;
  double loss = 0, count = 0;
  for (size_t r = 0; r < n; r++) {
    if (mask[r] == 0) continue;
    const float *z = logits + r * ld;
    eellm_cpu_check_index("cross-entropy target", targets[r], V);
    float max = row_max(z, V);
    double sum = shifted_exp_sum(z, V, max, inv_temp, NULL);
    loss += mask[r] * row_loss(sum, max, z[targets[r]], temperature, dynamic);
    count += mask[r];
  }
  stats[0] = loss;
  stats[1] = count;
}

EELLM_VECTORIZED static void scale(float *x, size_t n, float by) {
  for (size_t j = 0; j < n; j++) x[j] *= by;
}

/* dz [V] = coef * c * (softmax(z / T) - onehot(target)); c = 1, or with
 * `dynamic` the largest probability, 1 / sum, taken as a constant. Returns
 * the row's shifted softmax denominator sum, its max in *max. */
static double xent_row_grad(const float *z, size_t V, int32_t target, float inv_temp, double coef,
                            int dynamic, float *dz, float *max) {
  *max = row_max(z, V);
  double sum = shifted_exp_sum(z, V, *max, inv_temp, dz);
  if (dynamic) coef /= sum;
  scale(dz, V, (float)(coef / sum));
  dz[target] -= (float)coef;
  return sum;
}

void eellm_cpu_xent_fwd_bwd(size_t n, size_t V, const float *logits, size_t ld,
                            const int32_t *targets, const float *mask, float scale,
                            float temperature, int dynamic, double *stats, float *dlogits,
                            size_t ld_d) {
  double count = 0, loss = 0; /* count: the mask's sum, known before any row */
  for (size_t r = 0; r < n; r++) count += mask[r];
  for (size_t r = 0; r < n; r++) {
    float *dz = dlogits + r * ld_d;
    if (mask[r] == 0 || count == 0) {
      for (size_t j = 0; j < V; j++) dz[j] = 0;
      continue;
    }
    eellm_cpu_check_index("cross-entropy target", targets[r], V);
    const float *z = logits + r * ld;
    double coef = (double)scale * mask[r] / ((double)temperature * count);
    float max;
    double sum = xent_row_grad(z, V, targets[r], 1.0f / temperature, coef, dynamic, dz, &max);
    loss += mask[r] * row_loss(sum, max, z[targets[r]], temperature, dynamic);
  }
  stats[0] = loss;
  stats[1] = count;
}

void eellm_cpu_xent_part_stats(size_t n, size_t V, const float *logits, size_t ld,
                               const int32_t *targets, size_t vocab_lo, float temperature,
                               float *rowstats) {
  float inv_temp = 1.0f / temperature;
  for (size_t r = 0; r < n; r++) {
    const float *z = logits + r * ld;
    float max = row_max(z, V), *s = rowstats + 3 * r;
    size_t local = (size_t)targets[r] - vocab_lo; /* huge below the part */
    s[0] = max * inv_temp;
    s[1] = (float)shifted_exp_sum(z, V, max, inv_temp, NULL);
    s[2] = local < V ? z[local] * inv_temp : 0.0f;
  }
}

void eellm_cpu_softmax_stats_combine(float *into, const float *from, size_t n) {
  for (size_t r = 0; r < n; r++, into += 3, from += 3) {
    float max = fmaxf(into[0], from[0]);
    into[1] = into[1] * expf(into[0] - max) + from[1] * expf(from[0] - max);
    into[0] = max;
    into[2] += from[2];
  }
}

void eellm_cpu_xent_stats_fwd(size_t n, const float *rowstats, const float *mask, int dynamic,
                              double *stats) {
  double loss = 0, count = 0;
  for (size_t r = 0; r < n; r++) {
    if (mask[r] == 0) continue;
    const float *s = rowstats + 3 * r;
    /* -log softmax(u)[t] = log(sum) + max - u_t; the largest probability is 1 / sum. */
    double row_loss = log((double)s[1]) + (double)s[0] - s[2];
    if (dynamic) row_loss /= s[1];
    loss += mask[r] * row_loss;
    count += mask[r];
  }
  stats[0] = loss;
  stats[1] = count;
}

void eellm_cpu_xent_part_bwd(size_t n, size_t V, const float *logits, size_t ld,
                             const int32_t *targets, size_t vocab_lo, const float *mask,
                             const float *rowstats, const double *stats, float scale_by,
                             float temperature, int dynamic, float *dlogits, size_t ld_d) {
  float inv_temp = 1.0f / temperature;
  for (size_t r = 0; r < n; r++) {
    float *dz = dlogits + r * ld_d;
    const float *s = rowstats + 3 * r;
    double coef = mask[r] == 0 || stats[1] == 0
                      ? 0
                      : (double)scale_by * mask[r] / ((double)temperature * stats[1]);
    if (dynamic) coef /= s[1];
    /* The whole row's max in logit units: exact at temperature 1. */
    shifted_exp_sum(logits + r * ld, V, s[0] * temperature, inv_temp, dz);
    scale(dz, V, (float)(coef / s[1]));
    size_t local = (size_t)targets[r] - vocab_lo;
    if (local < V) dz[local] -= (float)coef;
  }
}
