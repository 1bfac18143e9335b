/* StarPU glue of the token + learned position embedding, forward and backward
 * (kernels in cpu/embedding.c; kvcache.c's embed_at shares the forward). */
#include "glue.h"

struct embed_args {
  unsigned seq_len;
  int has_wpe; /* 0 for RoPE models: no learned positions */
};

EELLM_CODELET(embed_fwd)
EELLM_CODELET(embed_bwd)

/* tokens [N] int32, wte [V, D], wpe [C, D] (optional), out [N, D]. */
static void embed_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  int b = 2;
  struct eellm_tensor_view wpe = {0};
  if (args->has_wpe) wpe = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view out = eellm_tensor_view(buffers[b]);
  eellm_cpu_embed_fwd(STARPU_VECTOR_GET_NX(buffers[0]), out.cols,
                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[0]), NULL, args->seq_len,
                      (const float *)STARPU_MATRIX_GET_PTR(buffers[1]),
                      STARPU_MATRIX_GET_LD(buffers[1]), STARPU_MATRIX_GET_NY(buffers[1]),
                      (const float *)wpe.ptr, wpe.ld, wpe.rows, (float *)out.ptr, out.ld);
}

/* tokens [N] int32, dout [N, D], dwte [V, D] (+=), dwpe [C, D] (+=, optional). */
static void embed_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  struct eellm_tensor_view dout = eellm_tensor_view(buffers[1]);
  struct eellm_tensor_view dwte = eellm_tensor_view(buffers[2]), dwpe = {0};
  if (args->has_wpe) dwpe = eellm_tensor_view(buffers[3]);
  eellm_cpu_embed_bwd(STARPU_VECTOR_GET_NX(buffers[0]), dout.cols,
                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[0]), args->seq_len,
                      (const float *)dout.ptr, dout.ld, (float *)dwte.ptr, dwte.ld, dwte.rows,
                      (float *)dwpe.ptr, dwpe.ld);
}

void eellm_insert_embed_fwd(starpu_data_handle_t tokens, starpu_data_handle_t wte,
                            starpu_data_handle_t wpe, starpu_data_handle_t out, unsigned seq_len,
                            const struct eellm_task_info *info) {
  struct embed_args args = {.seq_len = seq_len, .has_wpe = wpe != NULL};
  struct starpu_data_descr buffers[4];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){wte, STARPU_R};
  if (wpe) buffers[n++] = (struct starpu_data_descr){wpe, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){out, STARPU_W};
  eellm_submit(&embed_fwd_cl, buffers, n, &args, sizeof args, info);
}

void eellm_insert_embed_bwd(starpu_data_handle_t tokens, starpu_data_handle_t dout,
                            starpu_data_handle_t dwte, starpu_data_handle_t dwpe, unsigned seq_len,
                            const struct eellm_task_info *info) {
  struct embed_args args = {.seq_len = seq_len, .has_wpe = dwpe != NULL};
  struct starpu_data_descr buffers[4];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dout, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dwte, STARPU_RW};
  if (dwpe) buffers[n++] = (struct starpu_data_descr){dwpe, STARPU_RW};
  eellm_submit(&embed_bwd_cl, buffers, n, &args, sizeof args, info);
}
