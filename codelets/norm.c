/* StarPU glue of LayerNorm and RMSNorm over the last dimension, forward and
 * backward (kernels in cpu/norm.c and cuda/norm.cu). */
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
struct norm_fwd_task {
  struct eellm_tensor_view x, y, stats;
  const float *gain, *bias;
};

static struct norm_fwd_task norm_fwd_task(void *buffers[], const struct norm_fwd_args *args) {
  int b = 0;
  struct norm_fwd_task t = {0};
  t.x = eellm_tensor_view(buffers[b++]);
  t.gain = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  if (args->has_bias) t.bias = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  t.y = eellm_tensor_view(buffers[b++]);
  t.stats = eellm_tensor_view(buffers[b]);
  return t;
}

static void norm_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct norm_fwd_args *args = cl_arg;
  struct norm_fwd_task t = norm_fwd_task(buffers, args);
  eellm_cpu_norm_fwd(t.x.rows, t.x.cols, args->kind, args->eps, (const float *)t.x.ptr, t.x.ld,
                     t.gain, t.bias, (float *)t.y.ptr, t.y.ld, (float *)t.stats.ptr, t.stats.ld);
}

/* x [N, D], gain [D], stats [N, 2], dy [N, D], dx [N, D] (beta_dx),
 * dgain [D] (+=, optional), dbias [D] (+=, optional), work (SCRATCH, with either). */
struct norm_bwd_task {
  struct eellm_tensor_view x, stats, dy, dx;
  const float *gain;
  float *dgain, *dbias;
  void *work;
};

static struct norm_bwd_task norm_bwd_task(void *buffers[], const struct norm_bwd_args *args) {
  int b = 0;
  struct norm_bwd_task t = {0};
  t.x = eellm_tensor_view(buffers[b++]);
  t.gain = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  t.stats = eellm_tensor_view(buffers[b++]);
  t.dy = eellm_tensor_view(buffers[b++]);
  t.dx = eellm_tensor_view(buffers[b++]);
  if (args->has_dgain) t.dgain = (float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  if (args->has_dbias) t.dbias = (float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  if (t.dgain || t.dbias) t.work = (void *)STARPU_VECTOR_GET_PTR(buffers[b]);
  return t;
}

static void norm_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct norm_bwd_args *args = cl_arg;
  struct norm_bwd_task t = norm_bwd_task(buffers, args);
  eellm_cpu_norm_bwd(t.x.rows, t.x.cols, args->kind, args->beta_dx, (const float *)t.x.ptr, t.x.ld,
                     t.gain, (const float *)t.stats.ptr, t.stats.ld, (const float *)t.dy.ptr,
                     t.dy.ld, (float *)t.dx.ptr, t.dx.ld, t.dgain, t.dbias, t.work);
}

#ifdef STARPU_USE_CUDA
static void norm_fwd_cuda(void *buffers[], void *cl_arg) {
  const struct norm_fwd_args *args = cl_arg;
  struct norm_fwd_task t = norm_fwd_task(buffers, args);
  eellm_cuda_norm_fwd(t.x.rows, t.x.cols, args->kind, args->eps, (const float *)t.x.ptr, t.x.ld,
                      t.gain, t.bias, (float *)t.y.ptr, t.y.ld, (float *)t.stats.ptr, t.stats.ld,
                      starpu_cuda_get_local_stream());
}

static void norm_bwd_cuda(void *buffers[], void *cl_arg) {
  const struct norm_bwd_args *args = cl_arg;
  struct norm_bwd_task t = norm_bwd_task(buffers, args);
  eellm_cuda_norm_bwd(t.x.rows, t.x.cols, args->kind, args->beta_dx, (const float *)t.x.ptr, t.x.ld,
                      t.gain, (const float *)t.stats.ptr, t.stats.ld, (const float *)t.dy.ptr,
                      t.dy.ld, (float *)t.dx.ptr, t.dx.ld, t.dgain, t.dbias, t.work,
                      starpu_cuda_get_local_stream());
}
#endif

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
  size_t dim = starpu_matrix_get_nx(x);
  n = eellm_add_scratch(
      buffers, n,
      EELLM_WORK_BYTES(eellm_cpu_norm_bwd_work_bytes(dim, dgain != NULL, dbias != NULL),
                       eellm_cuda_norm_bwd_work_bytes(starpu_matrix_get_ny(x), dim, dgain != NULL,
                                                      dbias != NULL)));
  eellm_submit(&norm_bwd_cl, buffers, n, &args, sizeof args, info);
}
