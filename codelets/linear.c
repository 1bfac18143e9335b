/* StarPU glue of the linear layer y = x @ W (+ b) (+ residual), forward and
 * backward (kernels in cpu/linear.c). */
#include "glue.h"

struct linear_fwd_args {
  int transpose_w;
  int has_bias, has_residual;
};

struct linear_bwd_args {
  int transpose_w;
  int beta_dx;
  int has_dx, has_dw, has_db;
};

EELLM_CODELET(linear_fwd)
EELLM_CODELET(linear_bwd)

/* x [N, K], W [K, M] (or [M, K] transposed), b [M] (optional), residual [N, M] (optional),
 * y [N, M]. */
static void linear_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct linear_fwd_args *args = cl_arg;
  int b = 0;
  struct eellm_tensor_view x = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view w = eellm_tensor_view(buffers[b++]);
  const float *bias = args->has_bias ? (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  struct eellm_tensor_view res = {0};
  if (args->has_residual) res = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view y = eellm_tensor_view(buffers[b]);
  eellm_cpu_linear_fwd(x.rows, x.cols, y.cols, args->transpose_w, (const float *)x.ptr, x.ld,
                       (const float *)w.ptr, w.ld, bias, (const float *)res.ptr, res.ld,
                       (float *)y.ptr, y.ld);
}

/* x [N, K], W [K, M] (or [M, K] transposed), dy [N, M], dx [N, K] (optional),
 * dW (optional), db [M] (optional), work (SCRATCH, with db). */
static void linear_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct linear_bwd_args *args = cl_arg;
  int b = 0;
  struct eellm_tensor_view x = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view w = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view dy = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view dx = {0}, dw = {0};
  if (args->has_dx) dx = eellm_tensor_view(buffers[b++]);
  if (args->has_dw) dw = eellm_tensor_view(buffers[b++]);
  float *db = NULL;
  void *work = NULL;
  if (args->has_db) {
    db = (float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
    work = (void *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  }
  eellm_cpu_linear_bwd(x.rows, x.cols, dy.cols, args->transpose_w, args->beta_dx,
                       (const float *)x.ptr, x.ld, (const float *)w.ptr, w.ld,
                       (const float *)dy.ptr, dy.ld, (float *)dx.ptr, dx.ld, (float *)dw.ptr,
                       dw.ld, db, work);
}

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
  struct starpu_data_descr buffers[7];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){w, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dy, STARPU_R};
  if (dx) buffers[n++] = (struct starpu_data_descr){dx, beta_dx ? STARPU_RW : STARPU_W};
  if (dw) buffers[n++] = (struct starpu_data_descr){dw, STARPU_RW};
  if (db) buffers[n++] = (struct starpu_data_descr){db, STARPU_RW};
  n = eellm_add_scratch(buffers, n,
                        eellm_cpu_linear_bwd_work_bytes(starpu_matrix_get_nx(dy), db != NULL));
  eellm_submit(&linear_bwd_cl, buffers, n, &args, sizeof args, info);
}
