/* The next token from an exit's logits, and how confident the exit is: largest
 * probability or normalised entropy; the token greedy or drawn with temperature,
 * top-k and top-p from a uniform number the caller supplies (so the host keeps
 * the random streams and a task stays a pure function of its inputs). */
#include <math.h>
#include <stdlib.h>

#include "kernels.h"

struct ranked {
  float z;
  int32_t id;
};

size_t eellm_cpu_next_token_work_bytes(size_t V, int sampling) {
  return sampling ? V * sizeof(struct ranked) : 0;
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

/* Confidence of softmax(z / exit_temperature) and the greedy choice, in double. */
static struct eellm_token_choice greedy_row(const float *z, size_t V,
                                            const struct eellm_sampling *s) {
  double inv_t = 1.0 / s->exit_temperature;
  size_t best = 0;
  for (size_t j = 1; j < V; j++) best = z[j] > z[best] ? j : best;
  double sum = 0, weighted = 0;
  for (size_t j = 0; j < V; j++) {
    double shifted = ((double)z[j] - z[best]) * inv_t, e = exp(shifted);
    sum += e;
    weighted += e * shifted;
  }
  /* entropy = log(sum) - E[shifted]; the largest probability is exp(0) / sum. */
  double entropy = log(sum) - weighted / sum;
  /* The same of the raw logits (exit temperature 1), for raw_logprob / raw_maxprob. */
  double raw_sum = sum;
  if (s->exit_temperature != 1) {
    raw_sum = 0;
    for (size_t j = 0; j < V; j++) raw_sum += exp((double)z[j] - z[best]);
  }
  struct eellm_token_choice c = {.token = (int32_t)best,
                                 .logprob = (float)-log(sum),
                                 .raw_logprob = (float)-log(raw_sum),
                                 .raw_maxprob = (float)(1 / raw_sum)};
  c.confidence = s->entropy_rule ? (float)(V > 1 ? 1 - entropy / log((double)V) : 1)
                                 : (float)(1 / sum);
  return c;
}

/* Draws with uniform u from softmax(z * beta) restricted as eellm_sampling says;
 * order [V] is work. Sets the choice's token and logprob. */
static void sample_row(const float *z, size_t V, const struct eellm_sampling *s, float u,
                       struct ranked *order, struct eellm_token_choice *c) {
  double beta = 1.0 / ((double)s->exit_temperature * s->temperature);
  size_t kept = V;
  for (size_t j = 0; j < V; j++) order[j] = (struct ranked){z[j], (int32_t)j};
  if (filtering(s, V)) {
    qsort(order, V, sizeof *order, by_logit_desc);
    if (s->top_k > 0 && s->top_k < V) kept = s->top_k;
  }
  float max = order[0].z;
  for (size_t j = 1; j < kept; j++) max = order[j].z > max ? order[j].z : max;
  double total = 0;
  for (size_t j = 0; j < kept; j++) total += exp(((double)order[j].z - max) * beta);
  if (s->top_p > 0 && s->top_p < 1) {
    double mass = 0;
    size_t nucleus = 0;
    while (nucleus < kept && mass < s->top_p * total)
      mass += exp(((double)order[nucleus++].z - max) * beta);
    kept = nucleus;
    total = mass;
  }
  double target = u * total, acc = 0, w = 0;
  size_t pick = kept - 1;
  for (size_t j = 0; j < kept; j++) {
    w = exp(((double)order[j].z - max) * beta);
    acc += w;
    if (acc > target) {
      pick = j;
      break;
    }
  }
  w = exp(((double)order[pick].z - max) * beta);
  /* raw_logprob of the drawn token: greedy_row left that of the argmax, max logit zb. */
  float zb = z[c->token];
  c->raw_logprob = (float)((double)c->raw_logprob + ((double)order[pick].z - zb));
  c->token = order[pick].id;
  c->logprob = (float)log(w / total);
}

void eellm_cpu_sampling_probs(const float *z, size_t V, const struct eellm_sampling *s,
                              void *work, double *probs) {
  struct ranked *order = work;
  double beta = 1.0 / ((double)s->exit_temperature * s->temperature);
  size_t kept = V;
  for (size_t j = 0; j < V; j++) order[j] = (struct ranked){z[j], (int32_t)j};
  if (filtering(s, V)) {
    qsort(order, V, sizeof *order, by_logit_desc);
    if (s->top_k > 0 && s->top_k < V) kept = s->top_k;
  }
  float max = order[0].z;
  for (size_t j = 1; j < kept; j++) max = order[j].z > max ? order[j].z : max;
  double total = 0;
  for (size_t j = 0; j < kept; j++) total += exp(((double)order[j].z - max) * beta);
  if (s->top_p > 0 && s->top_p < 1) {
    double mass = 0;
    size_t nucleus = 0;
    while (nucleus < kept && mass < s->top_p * total)
      mass += exp(((double)order[nucleus++].z - max) * beta);
    kept = nucleus;
    total = mass;
  }
  for (size_t j = 0; j < V; j++) probs[j] = 0;
  for (size_t j = 0; j < kept; j++)
    probs[order[j].id] = exp(((double)order[j].z - max) * beta) / total;
}

static int all_finite(const float *z, size_t V) {
  for (size_t j = 0; j < V; j++)
    if (!isfinite(z[j])) return 0;
  return 1;
}

void eellm_cpu_next_token(size_t M, size_t V, const float *logits, size_t ld,
                          const float *uniforms, const struct eellm_sampling *s,
                          struct eellm_token_choice *choices, void *work) {
  for (size_t m = 0; m < M; m++) {
    const float *z = logits + m * ld;
    if (!all_finite(z, V)) { /* no token from garbage: the caller stops on -1 */
      choices[m] = (struct eellm_token_choice){.token = -1, .confidence = 0, .logprob = NAN,
                                                .raw_logprob = NAN, .raw_maxprob = NAN};
      continue;
    }
    choices[m] = greedy_row(z, V, s);
    if (uniforms) sample_row(z, V, s, uniforms[m], work, &choices[m]);
  }
}
