/* Vocabulary-parallel softmax cross-entropy (Megatron-LM): each
 * tensor-parallel rank holds the logits of its part of the vocabulary, and the
 * ranks exchange three numbers per row, never the logits. In the
 * temperature-scaled domain u = z / T a row's statistics are (max_j u_j,
 * sum_j exp(u_j - max), u_target, 0 where the target is another part's); the
 * parts' statistics combine into the whole row's (collective.c), from which
 * the loss and each part's gradient follow. */
#include <math.h>

#include "kernels.h"

void eellm_cpu_xent_part_stats(size_t n, size_t V, const float *logits, size_t ld,
                               const int32_t *targets, size_t vocab_lo, float temperature,
                               float *rowstats) {
  float inv_temp = 1.0f / temperature;
  for (size_t r = 0; r < n; r++) {
    const float *z = logits + r * ld;
    float max = z[0] * inv_temp;
    for (size_t j = 1; j < V; j++) max = fmaxf(max, z[j] * inv_temp);
    double sum = 0;
    for (size_t j = 0; j < V; j++) sum += expf(z[j] * inv_temp - max);
    size_t local = (size_t)targets[r] - vocab_lo;
    float *s = rowstats + 3 * r;
    s[0] = max;
    s[1] = (float)sum;
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
                             const float *rowstats, const double *stats, float scale,
                             float temperature, int dynamic, float *dlogits, size_t ld_d) {
  float inv_temp = 1.0f / temperature;
  for (size_t r = 0; r < n; r++) {
    float *dz = dlogits + r * ld_d;
    const float *z = logits + r * ld, *s = rowstats + 3 * r;
    double coef = mask[r] == 0 || stats[1] == 0
                      ? 0
                      : (double)scale * mask[r] / ((double)temperature * stats[1]);
    if (dynamic) coef /= s[1];
    float prob_coef = (float)(coef / s[1]);
    for (size_t j = 0; j < V; j++) dz[j] = prob_coef * expf(z[j] * inv_temp - s[0]);
    size_t local = (size_t)targets[r] - vocab_lo;
    if (local < V) dz[local] -= (float)coef;
  }
}
