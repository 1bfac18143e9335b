/* StarPU glue of the MLP activations GELU and SwiGLU, forward and backward
 * (kernels in cpu/activation.c and cuda/activation.cu). */
#include "glue.h"

struct activation_fwd_args {
  enum eellm_activation act;
};

struct activation_bwd_args {
  enum eellm_activation act;
  int beta_dx;
};

EELLM_CODELET(activation_fwd)
EELLM_CODELET(activation_bwd)

/* GELU: h [N, F] -> a [N, F]; SwiGLU: h [N, 2F] = gate | up -> a [N, F]. */
static void activation_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct activation_fwd_args *args = cl_arg;
  struct eellm_tensor_view h = eellm_tensor_view(buffers[0]), a = eellm_tensor_view(buffers[1]);
  eellm_cpu_activation_fwd(a.rows, a.cols, args->act, (const float *)h.ptr, h.ld,
                           (float *)a.ptr, a.ld);
}

#ifdef STARPU_USE_CUDA
static void activation_fwd_cuda(void *buffers[], void *cl_arg) {
  const struct activation_fwd_args *args = cl_arg;
  struct eellm_tensor_view h = eellm_tensor_view(buffers[0]), a = eellm_tensor_view(buffers[1]);
  eellm_cuda_activation_fwd(a.rows, a.cols, args->act, (const float *)h.ptr, h.ld, (float *)a.ptr,
                            a.ld, starpu_cuda_get_local_stream());
}
#endif

/* GELU: h [N, F], da [N, F] -> dh [N, F];
 * SwiGLU: h [N, 2F], da [N, F] -> dh [N, 2F] = dgate | dup. dh honours beta_dx. */
static void activation_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct activation_bwd_args *args = cl_arg;
  struct eellm_tensor_view h = eellm_tensor_view(buffers[0]), da = eellm_tensor_view(buffers[1]);
  struct eellm_tensor_view dh = eellm_tensor_view(buffers[2]);
  eellm_cpu_activation_bwd(da.rows, da.cols, args->act, args->beta_dx, (const float *)h.ptr, h.ld,
                           (const float *)da.ptr, da.ld, (float *)dh.ptr, dh.ld);
}

#ifdef STARPU_USE_CUDA
static void activation_bwd_cuda(void *buffers[], void *cl_arg) {
  const struct activation_bwd_args *args = cl_arg;
  struct eellm_tensor_view h = eellm_tensor_view(buffers[0]), da = eellm_tensor_view(buffers[1]);
  struct eellm_tensor_view dh = eellm_tensor_view(buffers[2]);
  eellm_cuda_activation_bwd(da.rows, da.cols, args->act, args->beta_dx, (const float *)h.ptr, h.ld,
                            (const float *)da.ptr, da.ld, (float *)dh.ptr, dh.ld,
                            starpu_cuda_get_local_stream());
}
#endif

void eellm_insert_activation_fwd(starpu_data_handle_t h, starpu_data_handle_t a,
                                 enum eellm_activation act, const struct eellm_task_info *info) {
  struct activation_fwd_args args = {.act = act};
  struct starpu_data_descr buffers[] = {{h, STARPU_R}, {a, STARPU_W}};
  eellm_submit(&activation_fwd_cl, buffers, 2, &args, sizeof args, info);
}

void eellm_insert_activation_bwd(starpu_data_handle_t h, starpu_data_handle_t da,
                                 starpu_data_handle_t dh, enum eellm_activation act, int beta_dx,
                                 const struct eellm_task_info *info) {
  struct activation_bwd_args args = {.act = act, .beta_dx = beta_dx};
  struct starpu_data_descr buffers[] = {
      {h, STARPU_R}, {da, STARPU_R}, {dh, beta_dx ? STARPU_RW : STARPU_W}};
  eellm_submit(&activation_bwd_cl, buffers, 3, &args, sizeof args, info);
}
