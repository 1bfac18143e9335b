/* Softmax cross-entropy over the vocabulary with a loss mask and a temperature. */
#include "codelets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct xent_args {
  float temperature;
  float scale; /* backward only */
};

/* A target outside the vocabulary would read another row's logits. */
static void check_target(int32_t target, size_t vocab) {
  if (target < 0 || (size_t)target >= vocab) {
    fprintf(stderr, "eellm: cross-entropy target %d outside vocabulary of %zu\n", (int)target,
            vocab);
    abort();
  }
}

static float row_max(const float *z, size_t V) {
  float max = z[0];
  for (size_t j = 1; j < V; j++) max = z[j] > max ? z[j] : max;
  return max;
}

/* Sum over j of exp((z_j - max) / T): the softmax denominator, shifted by max / T. */
static double shifted_exp_sum(const float *z, size_t V, float max, float inv_temp) {
  double sum = 0;
  for (size_t j = 0; j < V; j++) sum += expf((z[j] - max) * inv_temp);
  return sum;
}

/* logits [N, V] (R), targets [N] int32 (R), mask [N] (R), stats [2] double (W). */
static void xent_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct xent_args *args = cl_arg;
  const float *logits = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t V = STARPU_MATRIX_GET_NX(buffers[0]), N = STARPU_MATRIX_GET_NY(buffers[0]);
  size_t ld = STARPU_MATRIX_GET_LD(buffers[0]);
  const int32_t *targets = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]);
  const float *mask = (const float *)STARPU_VECTOR_GET_PTR(buffers[2]);
  double *stats = (double *)STARPU_VECTOR_GET_PTR(buffers[3]);
  float inv_temp = 1.0f / args->temperature;

  double loss = 0, count = 0;
  for (size_t n = 0; n < N; n++) {
    if (mask[n] == 0) continue;
    const float *z = logits + n * ld;
    check_target(targets[n], V);
    float max = row_max(z, V);
    /* -log softmax(z / T)[t] = log(sum_j exp((z_j - max) / T)) + (max - z_t) / T */
    double row_loss = log(shifted_exp_sum(z, V, max, inv_temp)) +
                      ((double)max - z[targets[n]]) / args->temperature;
    loss += mask[n] * row_loss;
    count += mask[n];
  }
  stats[0] = loss;
  stats[1] = count;
}

/* dz [V] = coef * (softmax(z / T) - onehot(target)). */
static void xent_row_grad(const float *z, size_t V, int32_t target, float inv_temp, double coef,
                          float *dz) {
  float max = row_max(z, V);
  double sum = 0;
  for (size_t j = 0; j < V; j++) {
    dz[j] = expf((z[j] - max) * inv_temp);
    sum += dz[j];
  }
  float prob_coef = (float)(coef / sum);
  for (size_t j = 0; j < V; j++) dz[j] *= prob_coef;
  dz[target] -= (float)coef;
}

/* logits [N, V] (R), targets [N] int32 (R), mask [N] (R), stats [2] double (R),
 * dlogits [N, V] (W). */
static void xent_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct xent_args *args = cl_arg;
  const float *logits = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t V = STARPU_MATRIX_GET_NX(buffers[0]), N = STARPU_MATRIX_GET_NY(buffers[0]);
  size_t ld = STARPU_MATRIX_GET_LD(buffers[0]);
  const int32_t *targets = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]);
  const float *mask = (const float *)STARPU_VECTOR_GET_PTR(buffers[2]);
  const double *stats = (const double *)STARPU_VECTOR_GET_PTR(buffers[3]);
  float *dlogits = (float *)STARPU_MATRIX_GET_PTR(buffers[4]);
  size_t ld_d = STARPU_MATRIX_GET_LD(buffers[4]);
  double count = stats[1];

  for (size_t n = 0; n < N; n++) {
    float *dz = dlogits + n * ld_d;
    if (mask[n] == 0 || count == 0) {
      for (size_t j = 0; j < V; j++) dz[j] = 0;
      continue;
    }
    check_target(targets[n], V);
    double coef = (double)args->scale * mask[n] / ((double)args->temperature * count);
    xent_row_grad(logits + n * ld, V, targets[n], 1.0f / args->temperature, coef, dz);
  }
}

static struct starpu_perfmodel xent_fwd_model = {.type = STARPU_HISTORY_BASED,
                                                 .symbol = "eellm_xent_fwd"};
static struct starpu_perfmodel xent_bwd_model = {.type = STARPU_HISTORY_BASED,
                                                 .symbol = "eellm_xent_bwd"};

static struct starpu_codelet xent_fwd_cl = {
    .cpu_funcs = {xent_fwd_cpu},
    .cpu_funcs_name = {"xent_fwd_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &xent_fwd_model,
    .name = "xent_fwd",
};
static struct starpu_codelet xent_bwd_cl = {
    .cpu_funcs = {xent_bwd_cpu},
    .cpu_funcs_name = {"xent_bwd_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &xent_bwd_model,
    .name = "xent_bwd",
};

static void check_temperature(float temperature) {
  if (!(temperature > 0)) {
    fprintf(stderr, "eellm: cross-entropy temperature %g must be positive\n", temperature);
    abort();
  }
}

void eellm_insert_xent_fwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                           starpu_data_handle_t mask, starpu_data_handle_t stats,
                           float temperature, const struct eellm_task_info *info) {
  check_temperature(temperature);
  struct xent_args args = {temperature, 0};
  struct starpu_data_descr buffers[] = {
      {logits, STARPU_R},
      {targets, STARPU_R},
      {mask, STARPU_R},
      {stats, STARPU_W},
  };
  eellm_submit(&xent_fwd_cl, buffers, 4, &args, sizeof args, info);
}

void eellm_insert_xent_bwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                           starpu_data_handle_t mask, starpu_data_handle_t stats,
                           starpu_data_handle_t dlogits, float scale, float temperature,
                           const struct eellm_task_info *info) {
  check_temperature(temperature);
  struct xent_args args = {temperature, scale};
  struct starpu_data_descr buffers[] = {
      {logits, STARPU_R},
      {targets, STARPU_R},
      {mask, STARPU_R},
      {stats, STARPU_R},
      {dlogits, STARPU_W},
  };
  eellm_submit(&xent_bwd_cl, buffers, 5, &args, sizeof args, info);
}
