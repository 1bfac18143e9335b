/* The next token from an exit's logits, and how confident the exit is: largest
 * probability or normalised entropy; the token greedy or drawn with temperature,
 * top-k and top-p from a uniform number the caller supplies (so the host keeps
 * the random streams and a task stays a pure function of its inputs). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "vector.h"

struct ranked {
  float z;
  int32_t id;
};

/* Work: the ranking [V] when sampling, then a copy of a row [V] with limits. */
size_t eellm_cpu_next_token_work_bytes(size_t V, int sampling, int limited) {
  return (sampling ? V * sizeof(struct ranked) : 0) + (limited ? V * sizeof(float) : 0);
}

/* Row z as limit (NULL: none) has it: z, or its copy in `copy` with the banned
 * token's logit at -1e10; *row_s is s with the row's top_p. */
static const float *limited_row(const float *z, size_t V, const struct eellm_sampling *s,
                                const struct eellm_row_limit *limit, float *copy,
                                struct eellm_sampling *row_s) {
  *row_s = *s;
  if (!limit) return z;
  row_s->top_p = limit->top_p;
  if (limit->banned < 0 || (size_t)limit->banned >= V) return z;
  memcpy(copy, z, V * sizeof *z);
  copy[limit->banned] = -1e10f;
  return copy;
}

/* Larger logits first; equal logits by id, so the order is deterministic. */
static int by_logit_desc(const void *a, const void *b) {
  const struct ranked *x = a, *y = b;
  if (x->z != y->z) return x->z > y->z ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

static int filtering(const struct eellm_sampling *s, size_t V) {
  return (s->top_k > 0 && s->top_k < V) || (s->top_p > 0 && s->top_p < 1);
}

/* The first index of the largest of z [V] (no NaN): the maximum, then the first
 * block of ARGMAX_BLOCK that holds it, each a pass at the vector units' width. */
#define ARGMAX_BLOCK 64

EELLM_VECTORIZED static size_t first_argmax(const float *z, size_t V) {
  float top = eellm_max(z, V, z[0]);
  size_t j0 = 0;
  for (; j0 + ARGMAX_BLOCK <= V; j0 += ARGMAX_BLOCK) {
    int holds = 0;
#pragma omp simd reduction(| : holds)
    for (size_t j = j0; j < j0 + ARGMAX_BLOCK; j++) holds |= z[j] == top;
    if (holds) break;
  }
  while (z[j0] != top) j0++;
  return j0;
}

/* The sums of eellm_cpu_softmax_stats from the largest logit z[best]: of exp(shifted)
 * and of exp(shifted) * shifted, shifted = (z[j] - z[best]) * inv_t. */
struct exp_sums {
  double sum, weighted;
};

/* Float terms by eellm_vexpf (vector.h: within about 2 ulp of expf, 0 under -87.3, where
 * the terms are below 1e-38 of the largest, which is 1), at the width of the processor's
 * vector units (EELLM_VECTORIZED); float partial sums of EELLM_SUM_BLOCK terms added in double, so
 * the sums are within about 1e-7 of the exact ones, far inside what the exit rules'
 * thresholds and the tests' 1e-5 resolve. */

EELLM_VECTORIZED static struct exp_sums exp_sums(const float *z, size_t V, size_t best,
                                                double inv_t) {
  const float top = z[best], scale = (float)inv_t;
  struct exp_sums s = {0, 0};
  for (size_t j0 = 0; j0 < V; j0 += EELLM_SUM_BLOCK) {
    size_t end = j0 + EELLM_SUM_BLOCK < V ? j0 + EELLM_SUM_BLOCK : V;
    float sum = 0, weighted = 0;
#pragma omp simd reduction(+ : sum, weighted)
    for (size_t j = j0; j < end; j++) {
      float shifted = (z[j] - top) * scale, e = eellm_vexpf(shifted);
      sum += e;
      weighted += e * shifted;
    }
    s.sum += sum;
    s.weighted += weighted;
  }
  return s;
}

struct eellm_softmax_stats eellm_cpu_softmax_stats(const float *z, size_t V, double inv_t) {
  size_t best = first_argmax(z, V);
  struct exp_sums s = exp_sums(z, V, best, inv_t);
  /* entropy = log(sum) - E[shifted]; the largest probability is exp(0) / sum. */
  double entropy = log(s.sum) - s.weighted / s.sum;
  return (struct eellm_softmax_stats){.argmax = best,
                                      .maxprob = 1 / s.sum,
                                      .entropy_conf = V > 1 ? 1 - entropy / log((double)V) : 1,
                                      .log_sum = log(s.sum)};
}

/* Confidence of softmax(z / exit_temperature) and the greedy choice, in double. */
static struct eellm_token_choice greedy_row(const float *z, size_t V,
                                            const struct eellm_sampling *s) {
  struct eellm_softmax_stats st = eellm_cpu_softmax_stats(z, V, 1.0 / s->exit_temperature);
  /* The same of the raw logits (exit temperature 1), for raw_logprob / raw_maxprob. */
  struct eellm_softmax_stats raw =
      s->exit_temperature == 1 ? st : eellm_cpu_softmax_stats(z, V, 1.0);
  struct eellm_token_choice c = {.token = (int32_t)st.argmax,
                                 .logprob = (float)-st.log_sum,
                                 .raw_logprob = (float)-raw.log_sum,
                                 .raw_maxprob = (float)raw.maxprob};
  c.confidence = (float)(s->entropy_rule ? st.entropy_conf : st.maxprob);
  return c;
}

/* The tokens softmax(z * beta) may draw as eellm_sampling restricts them: the
 * first `kept` of order (in id order, or by decreasing logit when top-k or
 * top-p restrict), their largest logit and their total weight. */
struct restricted {
  size_t kept;
  float max;
  double beta, total;
};

static struct restricted restrict_row(const float *z, size_t V, const struct eellm_sampling *s,
                                      struct ranked *order) {
  struct restricted r = {.kept = V,
                         .beta = 1.0 / ((double)s->exit_temperature * s->temperature)};
  for (size_t j = 0; j < V; j++) order[j] = (struct ranked){z[j], (int32_t)j};
  if (filtering(s, V)) {
    qsort(order, V, sizeof *order, by_logit_desc);
    if (s->top_k > 0 && s->top_k < V) r.kept = s->top_k;
  }
  r.max = order[0].z;
  for (size_t j = 1; j < r.kept; j++) r.max = order[j].z > r.max ? order[j].z : r.max;
  for (size_t j = 0; j < r.kept; j++) r.total += exp(((double)order[j].z - r.max) * r.beta);
  if (s->top_p > 0 && s->top_p < 1) {
    double mass = 0;
    size_t nucleus = 0;
    while (nucleus < r.kept && mass < s->top_p * r.total)
      mass += exp(((double)order[nucleus++].z - r.max) * r.beta);
    r.kept = nucleus;
    r.total = mass;
  }
  return r;
}

/* Draws with uniform u from softmax(z * beta) restricted as eellm_sampling says;
 * order [V] is work. Sets the choice's token and logprob. */
static void sample_row(const float *z, size_t V, const struct eellm_sampling *s, float u,
                       struct ranked *order, struct eellm_token_choice *c) {
  struct restricted r = restrict_row(z, V, s, order);
  double target = u * r.total, acc = 0, w = 0;
  size_t pick = r.kept - 1;
  for (size_t j = 0; j < r.kept; j++) {
    w = exp(((double)order[j].z - r.max) * r.beta);
    acc += w;
    if (acc > target) {
      pick = j;
      break;
    }
  }
  w = exp(((double)order[pick].z - r.max) * r.beta);
  /* raw_logprob of the drawn token: greedy_row left that of the argmax, max logit zb. */
  float zb = z[c->token];
  c->raw_logprob = (float)((double)c->raw_logprob + ((double)order[pick].z - zb));
  c->token = order[pick].id;
  c->logprob = (float)log(w / r.total);
}

void eellm_cpu_sampling_probs(const float *z, size_t V, const struct eellm_sampling *s,
                              const struct eellm_row_limit *limit, void *work, double *probs) {
  struct ranked *order = work;
  struct eellm_sampling row_s;
  z = limited_row(z, V, s, limit, (float *)(order + V), &row_s);
  struct restricted r = restrict_row(z, V, &row_s, order);
  for (size_t j = 0; j < V; j++) probs[j] = 0;
  for (size_t j = 0; j < r.kept; j++)
    probs[order[j].id] = exp(((double)order[j].z - r.max) * r.beta) / r.total;
}

/* z - z is 0 but for an infinity or NaN. */
EELLM_VECTORIZED static int all_finite(const float *z, size_t V) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (size_t j = 0; j < V; j++) bad |= z[j] - z[j] != 0;
  return !bad;
}

void eellm_cpu_next_token(size_t M, size_t V, const float *logits, size_t ld, const float *uniforms,
                          const struct eellm_row_limit *limits, const struct eellm_sampling *s,
                          struct eellm_token_choice *choices, void *work) {
  struct ranked *order = work;
  float *copy = (float *)(uniforms ? order + V : work);
  for (size_t m = 0; m < M; m++) {
    const float *z = logits + m * ld;
    if (!all_finite(z, V)) { /* no token from garbage: the caller stops on -1 */
      choices[m] = (struct eellm_token_choice){.token = -1, .confidence = 0, .logprob = NAN,
                                                .raw_logprob = NAN, .raw_maxprob = NAN};
      continue;
    }
    struct eellm_sampling row_s;
    z = limited_row(z, V, s, limits ? &limits[m] : NULL, copy, &row_s);
    choices[m] = greedy_row(z, V, &row_s);
    if (uniforms) sample_row(z, V, &row_s, uniforms[m], order, &choices[m]);
  }
}
