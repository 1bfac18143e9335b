/* LayerNorm and RMSNorm over the last dimension, forward and backward
 * (torch.nn.LayerNorm with biased variance; RMSNorm as x * rsqrt(mean(x^2) + eps) * gain). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "codelets.h"

struct norm_fwd_args {
  enum eellm_norm_kind kind;
  float eps;
  int has_bias;
};

struct norm_bwd_args {
  enum eellm_norm_kind kind;
  int beta_dx;
  int has_dgain, has_dbias;
};

/* Mean (0 for rmsnorm) and 1/sqrt(variance or mean square + eps) of one row, in double. */
static void row_stats(const float *x, size_t dim, enum eellm_norm_kind kind, float eps,
                      double *mean, double *rstd) {
  double sum = 0;
  if (kind == EELLM_LAYERNORM)
    for (size_t d = 0; d < dim; d++) sum += x[d];
  *mean = sum / dim;
  double sq = 0;
  for (size_t d = 0; d < dim; d++) sq += (x[d] - *mean) * (x[d] - *mean);
  *rstd = 1.0 / sqrt(sq / dim + eps);
}

/* x [N, D], gain [D], bias [D] (optional), y [N, D], stats [N, 2] = (mean, rstd). */
static void norm_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct norm_fwd_args *args = cl_arg;
  int b = 0;
  const float *x = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_x = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t n_rows = STARPU_MATRIX_GET_NY(buffers[b]);
  size_t dim = STARPU_MATRIX_GET_NX(buffers[b++]);
  const float *gain = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  const float *bias = args->has_bias ? (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  float *y = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_y = STARPU_MATRIX_GET_LD(buffers[b++]);
  float *stats = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_stats = STARPU_MATRIX_GET_LD(buffers[b]);

  for (size_t n = 0; n < n_rows; n++) {
    const float *x_row = x + n * ld_x;
    float *y_row = y + n * ld_y;
    double mean, rstd;
    row_stats(x_row, dim, args->kind, args->eps, &mean, &rstd);
    for (size_t d = 0; d < dim; d++) {
      double v = (x_row[d] - mean) * rstd * gain[d];
      y_row[d] = (float)(bias ? v + bias[d] : v);
    }
    stats[n * ld_stats] = (float)mean;
    stats[n * ld_stats + 1] = (float)rstd;
  }
}

/* dx of one row: rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gain;
 * rmsnorm has no mean to subtract, so its mean(g) term is absent. */
static void row_dx(const float *x, const float *dy, const float *gain, size_t dim,
                   enum eellm_norm_kind kind, double mean, double rstd, int beta_dx, float *dx) {
  double sum_g = 0, sum_gx = 0;
  for (size_t d = 0; d < dim; d++) {
    double g = (double)dy[d] * gain[d];
    sum_g += g;
    sum_gx += g * (x[d] - mean) * rstd;
  }
  double mean_g = kind == EELLM_LAYERNORM ? sum_g / dim : 0;
  double mean_gx = sum_gx / dim;
  for (size_t d = 0; d < dim; d++) {
    double g = (double)dy[d] * gain[d];
    double xhat = (x[d] - mean) * rstd;
    float v = (float)(rstd * (g - mean_g - xhat * mean_gx));
    dx[d] = beta_dx ? dx[d] + v : v;
  }
}

/* x [N, D], gain [D], stats [N, 2], dy [N, D], dx [N, D] (beta_dx),
 * dgain [D] (+=, optional), dbias [D] (+=, optional). */
static void norm_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct norm_bwd_args *args = cl_arg;
  int b = 0;
  const float *x = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_x = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t n_rows = STARPU_MATRIX_GET_NY(buffers[b]);
  size_t dim = STARPU_MATRIX_GET_NX(buffers[b++]);
  const float *gain = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  const float *stats = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_stats = STARPU_MATRIX_GET_LD(buffers[b++]);
  const float *dy = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_dy = STARPU_MATRIX_GET_LD(buffers[b++]);
  float *dx = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_dx = STARPU_MATRIX_GET_LD(buffers[b++]);
  float *dgain = args->has_dgain ? (float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  float *dbias = args->has_dbias ? (float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;

  /* Parameter gradients are sums over rows, accumulated in double:
   * sums[0, D) for dgain, sums[D, 2D) for dbias. */
  double *sums = NULL;
  if (dgain || dbias) {
    sums = calloc(2 * dim, sizeof *sums);
    if (!sums) {
      fprintf(stderr, "eellm: out of memory in norm_bwd\n");
      abort();
    }
  }

  for (size_t n = 0; n < n_rows; n++) {
    const float *x_row = x + n * ld_x, *dy_row = dy + n * ld_dy;
    double mean = stats[n * ld_stats], rstd = stats[n * ld_stats + 1];
    row_dx(x_row, dy_row, gain, dim, args->kind, mean, rstd, args->beta_dx, dx + n * ld_dx);
    if (!sums) continue;
    for (size_t d = 0; d < dim; d++) {
      sums[d] += dy_row[d] * (x_row[d] - mean) * rstd;
      sums[dim + d] += dy_row[d];
    }
  }
  if (sums) {
    for (size_t d = 0; d < dim; d++) {
      if (dgain) dgain[d] += (float)sums[d];
      if (dbias) dbias[d] += (float)sums[dim + d];
    }
    free(sums);
  }
}

static struct starpu_perfmodel norm_fwd_model = {.type = STARPU_HISTORY_BASED,
                                                 .symbol = "eellm_norm_fwd"};
static struct starpu_perfmodel norm_bwd_model = {.type = STARPU_HISTORY_BASED,
                                                 .symbol = "eellm_norm_bwd"};

static struct starpu_codelet norm_fwd_cl = {.cpu_funcs = {norm_fwd_cpu},
                                            .cpu_funcs_name = {"norm_fwd_cpu"},
                                            .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                            .model = &norm_fwd_model,
                                            .name = "norm_fwd"};
static struct starpu_codelet norm_bwd_cl = {.cpu_funcs = {norm_bwd_cpu},
                                            .cpu_funcs_name = {"norm_bwd_cpu"},
                                            .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                            .model = &norm_bwd_model,
                                            .name = "norm_bwd"};

void eellm_insert_norm_fwd(starpu_data_handle_t x, starpu_data_handle_t gain,
                           starpu_data_handle_t bias, starpu_data_handle_t y,
                           starpu_data_handle_t stats, enum eellm_norm_kind kind, float eps,
                           const struct eellm_task_info *info) {
  struct norm_fwd_args args = {.kind = kind, .eps = eps, .has_bias = bias != NULL};
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){gain, STARPU_R};
  if (bias) buffers[n++] = (struct starpu_data_descr){bias, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){y, STARPU_W};
  buffers[n++] = (struct starpu_data_descr){stats, STARPU_W};
  eellm_submit(&norm_fwd_cl, buffers, n, &args, sizeof args, info);
}

void eellm_insert_norm_bwd(starpu_data_handle_t x, starpu_data_handle_t gain,
                           starpu_data_handle_t stats, starpu_data_handle_t dy,
                           starpu_data_handle_t dx, starpu_data_handle_t dgain,
                           starpu_data_handle_t dbias, enum eellm_norm_kind kind, int beta_dx,
                           const struct eellm_task_info *info) {
  struct norm_bwd_args args = {
      .kind = kind, .beta_dx = beta_dx, .has_dgain = dgain != NULL, .has_dbias = dbias != NULL};
  struct starpu_data_descr buffers[7];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){gain, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){stats, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dy, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dx, beta_dx ? STARPU_RW : STARPU_W};
  if (dgain) buffers[n++] = (struct starpu_data_descr){dgain, STARPU_RW};
  if (dbias) buffers[n++] = (struct starpu_data_descr){dbias, STARPU_RW};
  eellm_submit(&norm_bwd_cl, buffers, n, &args, sizeof args, info);
}
