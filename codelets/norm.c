/* StarPU glue of LayerNorm and RMSNorm over the last dimension, forward and
 * backward (kernels in cpu/norm.c). */
#include "glue.h"

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

EELLM_CODELET(norm_fwd)
EELLM_CODELET(norm_bwd)

/* x [N, D], gain [D], bias [D] (optional), y [N, D], stats [N, 2] = (mean, rstd). */
static void norm_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct norm_fwd_args *args = cl_arg;
  int b = 0;
  struct eellm_tensor_view x = eellm_tensor_view(buffers[b++]);
  const float *gain = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  const float *bias = args->has_bias ? (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  struct eellm_tensor_view y = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view stats = eellm_tensor_view(buffers[b]);
  eellm_cpu_norm_fwd(x.rows, x.cols, args->kind, args->eps, (const float *)x.ptr, x.ld, gain,
                     bias, (float *)y.ptr, y.ld, (float *)stats.ptr, stats.ld);
}

/* x [N, D], gain [D], stats [N, 2], dy [N, D], dx [N, D] (beta_dx),
 * dgain [D] (+=, optional), dbias [D] (+=, optional), work (SCRATCH, with either). */
static void norm_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct norm_bwd_args *args = cl_arg;
  int b = 0;
  struct eellm_tensor_view x = eellm_tensor_view(buffers[b++]);
  const float *gain = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  struct eellm_tensor_view stats = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view dy = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view dx = eellm_tensor_view(buffers[b++]);
  float *dgain = args->has_dgain ? (float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  float *dbias = args->has_dbias ? (float *)STARPU_VECTOR_GET_PTR(buffers[b++]) : NULL;
  void *work = dgain || dbias ? (void *)STARPU_VECTOR_GET_PTR(buffers[b]) : NULL;
  eellm_cpu_norm_bwd(x.rows, x.cols, args->kind, args->beta_dx, (const float *)x.ptr, x.ld, gain,
                     (const float *)stats.ptr, stats.ld, (const float *)dy.ptr, dy.ld,
                     (float *)dx.ptr, dx.ld, dgain, dbias, work);
}

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
  struct starpu_data_descr buffers[8];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){gain, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){stats, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dy, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dx, beta_dx ? STARPU_RW : STARPU_W};
  if (dgain) buffers[n++] = (struct starpu_data_descr){dgain, STARPU_RW};
  if (dbias) buffers[n++] = (struct starpu_data_descr){dbias, STARPU_RW};
  n = eellm_add_scratch(buffers, n,
                        eellm_cpu_norm_bwd_work_bytes(starpu_matrix_get_nx(x), dgain != NULL,
                                                      dbias != NULL));
  eellm_submit(&norm_bwd_cl, buffers, n, &args, sizeof args, info);
}
