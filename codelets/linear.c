/* Linear layer y = x @ W (+ b) (+ residual), forward and backward, on cblas_sgemm. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "codelets.h"

struct linear_fwd_args {
  int transpose_w;
  int has_bias, has_residual;
};

struct linear_bwd_args {
  int transpose_w;
  int beta_dx;
  int has_dx, has_dw, has_db;
};

/* x [N, K], W [K, M] (or [M, K] transposed), b [M] (optional), residual [N, M] (optional),
 * y [N, M]. Bias and residual are written first and the product added on top. */
static void linear_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct linear_fwd_args *args = cl_arg;
  int b = 0;
  const float *x = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_x = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t n_rows = STARPU_MATRIX_GET_NY(buffers[b]);
  size_t k_in = STARPU_MATRIX_GET_NX(buffers[b++]);
  const float *w = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_w = STARPU_MATRIX_GET_LD(buffers[b++]);
  const float *bias = args->has_bias ? (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  const float *res = NULL;
  size_t ld_res = 0;
  if (args->has_residual) {
    res = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
    ld_res = STARPU_MATRIX_GET_LD(buffers[b++]);
  }
  float *y = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_y = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t m_out = STARPU_MATRIX_GET_NX(buffers[b]);

  if (bias || res) {
    for (size_t n = 0; n < n_rows; n++) {
      float *y_row = y + n * ld_y;
      for (size_t m = 0; m < m_out; m++)
        y_row[m] = (bias ? bias[m] : 0.0f) + (res ? res[n * ld_res + m] : 0.0f);
    }
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, args->transpose_w ? CblasTrans : CblasNoTrans,
              (int)n_rows, (int)m_out, (int)k_in, 1.0f, x, (int)ld_x, w, (int)ld_w,
              (bias || res) ? 1.0f : 0.0f, y, (int)ld_y);
}

/* db [M] += column sums of dy [N, M], summed in double. */
static void add_column_sums(const float *dy, size_t ld_dy, size_t n_rows, size_t m_out, float *db) {
  double *sums = calloc(m_out ? m_out : 1, sizeof *sums);
  if (!sums) {
    fprintf(stderr, "eellm: out of memory in linear_bwd\n");
    abort();
  }
  for (size_t n = 0; n < n_rows; n++)
    for (size_t m = 0; m < m_out; m++) sums[m] += dy[n * ld_dy + m];
  for (size_t m = 0; m < m_out; m++) db[m] += (float)sums[m];
  free(sums);
}

/* x [N, K], W [K, M] (or [M, K] transposed), dy [N, M];
 * dx [N, K] = dy @ W^T (beta_dx, optional), dW += x^T @ dy (dy^T @ x transposed, optional),
 * db [M] += column sums of dy (optional). */
static void linear_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct linear_bwd_args *args = cl_arg;
  int b = 0;
  const float *x = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_x = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t n_rows = STARPU_MATRIX_GET_NY(buffers[b]);
  size_t k_in = STARPU_MATRIX_GET_NX(buffers[b++]);
  const float *w = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_w = STARPU_MATRIX_GET_LD(buffers[b++]);
  const float *dy = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_dy = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t m_out = STARPU_MATRIX_GET_NX(buffers[b++]);

  if (args->has_dx) {
    float *dx = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
    size_t ld_dx = STARPU_MATRIX_GET_LD(buffers[b++]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, args->transpose_w ? CblasNoTrans : CblasTrans,
                (int)n_rows, (int)k_in, (int)m_out, 1.0f, dy, (int)ld_dy, w, (int)ld_w,
                args->beta_dx ? 1.0f : 0.0f, dx, (int)ld_dx);
  }
  if (args->has_dw) {
    float *dw = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
    size_t ld_dw = STARPU_MATRIX_GET_LD(buffers[b++]);
    if (args->transpose_w)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m_out, (int)k_in, (int)n_rows, 1.0f,
                  dy, (int)ld_dy, x, (int)ld_x, 1.0f, dw, (int)ld_dw);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k_in, (int)m_out, (int)n_rows, 1.0f,
                  x, (int)ld_x, dy, (int)ld_dy, 1.0f, dw, (int)ld_dw);
  }
  if (args->has_db)
    add_column_sums(dy, ld_dy, n_rows, m_out, (float *)STARPU_VECTOR_GET_PTR(buffers[b]));
}

static struct starpu_perfmodel linear_fwd_model = {.type = STARPU_HISTORY_BASED,
                                                   .symbol = "eellm_linear_fwd"};
static struct starpu_perfmodel linear_bwd_model = {.type = STARPU_HISTORY_BASED,
                                                   .symbol = "eellm_linear_bwd"};

static struct starpu_codelet linear_fwd_cl = {.cpu_funcs = {linear_fwd_cpu},
                                              .cpu_funcs_name = {"linear_fwd_cpu"},
                                              .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                              .model = &linear_fwd_model,
                                              .name = "linear_fwd"};
static struct starpu_codelet linear_bwd_cl = {.cpu_funcs = {linear_bwd_cpu},
                                              .cpu_funcs_name = {"linear_bwd_cpu"},
                                              .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                              .model = &linear_bwd_model,
                                              .name = "linear_bwd"};

void eellm_insert_linear_fwd(starpu_data_handle_t x, starpu_data_handle_t w, starpu_data_handle_t b,
                             starpu_data_handle_t residual, starpu_data_handle_t y, int transpose_w,
                             const struct eellm_task_info *info) {
  struct linear_fwd_args args = {
      .transpose_w = transpose_w, .has_bias = b != NULL, .has_residual = residual != NULL};
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){w, STARPU_R};
  if (b) buffers[n++] = (struct starpu_data_descr){b, STARPU_R};
  if (residual) buffers[n++] = (struct starpu_data_descr){residual, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){y, STARPU_W};
  eellm_submit(&linear_fwd_cl, buffers, n, &args, sizeof args, info);
}

void eellm_insert_linear_bwd(starpu_data_handle_t x, starpu_data_handle_t w,
                             starpu_data_handle_t dy, starpu_data_handle_t dx,
                             starpu_data_handle_t dw, starpu_data_handle_t db, int transpose_w,
                             int beta_dx, const struct eellm_task_info *info) {
  struct linear_bwd_args args = {.transpose_w = transpose_w,
                                 .beta_dx = beta_dx,
                                 .has_dx = dx != NULL,
                                 .has_dw = dw != NULL,
                                 .has_db = db != NULL};
  struct starpu_data_descr buffers[6];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){w, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dy, STARPU_R};
  if (dx) buffers[n++] = (struct starpu_data_descr){dx, beta_dx ? STARPU_RW : STARPU_W};
  if (dw) buffers[n++] = (struct starpu_data_descr){dw, STARPU_RW};
  if (db) buffers[n++] = (struct starpu_data_descr){db, STARPU_RW};
  eellm_submit(&linear_bwd_cl, buffers, n, &args, sizeof args, info);
}
