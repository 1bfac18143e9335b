/* The next token from an exit's logits, and how confident the exit is: largest
 * probability or normalised entropy; the token greedy or drawn with temperature,
 * top-k and top-p from a uniform number the caller supplies (so the host keeps
 * the random streams and a task stays a pure function of its inputs). */
#include "codelets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct next_token_args {
  struct eellm_sampling s;
  int has_uniforms;
};

struct ranked {
  float z;
  int32_t id;
};

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
  struct eellm_token_choice c = {.token = (int32_t)best, .logprob = (float)-log(sum)};
  c.confidence = s->entropy_rule ? (float)(V > 1 ? 1 - entropy / log((double)V) : 1)
                                 : (float)(1 / sum);
  return c;
}

/* Draws with uniform u from softmax(z * beta) restricted as eellm_sampling says;
 * order [V] is scratch. Sets the choice's token and logprob. */
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
  c->token = order[pick].id;
  c->logprob = (float)log(w / total);
}

/* logits [M, V] (R), uniforms [M] float (R, optional), choices [M] (W). */
static void next_token_cpu(void *buffers[], void *cl_arg) {
  const struct next_token_args *args = cl_arg;
  int b = 0;
  const float *logits = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld = STARPU_MATRIX_GET_LD(buffers[b]), M = STARPU_MATRIX_GET_NY(buffers[b]);
  size_t V = STARPU_MATRIX_GET_NX(buffers[b++]);
  const float *uniforms = args->has_uniforms ? (const float *)STARPU_VECTOR_GET_PTR(buffers[b++])
                                             : NULL;
  struct eellm_token_choice *choices =
      (struct eellm_token_choice *)STARPU_VECTOR_GET_PTR(buffers[b]);

  struct ranked *order = NULL;
  if (uniforms) {
    order = malloc(V * sizeof *order);
    if (!order) {
      fprintf(stderr, "eellm: next_token: out of memory for %zu scratch entries\n", V);
      abort();
    }
  }
  for (size_t m = 0; m < M; m++) {
    const float *z = logits + m * ld;
    choices[m] = greedy_row(z, V, &args->s);
    if (uniforms) sample_row(z, V, &args->s, uniforms[m], order, &choices[m]);
  }
  free(order);
}

static struct starpu_perfmodel next_token_model = {.type = STARPU_HISTORY_BASED,
                                                   .symbol = "eellm_next_token"};

static struct starpu_codelet next_token_cl = {.cpu_funcs = {next_token_cpu},
                                              .cpu_funcs_name = {"next_token_cpu"},
                                              .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                              .model = &next_token_model,
                                              .name = "next_token"};

void eellm_insert_next_token(starpu_data_handle_t logits, starpu_data_handle_t uniforms,
                             starpu_data_handle_t choices, const struct eellm_sampling *sampling,
                             const struct eellm_task_info *info) {
  if (starpu_vector_get_elemsize(choices) != sizeof(struct eellm_token_choice) ||
      (sampling->temperature > 0) != (uniforms != NULL)) {
    fprintf(stderr, "eellm: next_token: choices must hold struct eellm_token_choice, and "
                    "uniforms come with a temperature > 0 only\n");
    abort();
  }
  struct next_token_args args = {*sampling, uniforms != NULL};
  struct starpu_data_descr buffers[3];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){logits, STARPU_R};
  if (uniforms) buffers[n++] = (struct starpu_data_descr){uniforms, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){choices, STARPU_W};
  eellm_submit(&next_token_cl, buffers, n, &args, sizeof args, info);
}
