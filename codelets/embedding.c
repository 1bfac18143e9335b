/* StarPU glue of the token + learned position embedding, forward and backward
 * (kernels in cpu/embedding.c and cuda/embedding.cu; kvcache.c's embed_at shares
 * the forward). */
#include "glue.h"

struct embed_args {
  unsigned seq_len;
  int has_wpe;     /* 0 for RoPE models: no learned positions */
  size_t vocab_lo; /* the first token wte's rows hold */
};

EELLM_CODELET(embed_fwd)
EELLM_CODELET(embed_bwd)

struct embed_fwd_task {
  const int32_t *tokens, *positions;
  size_t n;
  struct eellm_tensor_view wte, wpe, out;
};

static struct embed_fwd_task embed_fwd_task(void *buffers[], int has_wpe, int has_positions) {
  int b = 0;
  struct embed_fwd_task t = {0};
  t.n = STARPU_VECTOR_GET_NX(buffers[b]);
  t.tokens = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  if (has_positions) t.positions = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  t.wte = eellm_tensor_view(buffers[b++]);
  if (has_wpe) t.wpe = eellm_tensor_view(buffers[b++]);
  t.out = eellm_tensor_view(buffers[b]);
  return t;
}

void eellm_embed_rows_cpu(void *buffers[], int has_wpe, int has_positions, unsigned seq_len,
                          size_t vocab_lo) {
  struct embed_fwd_task t = embed_fwd_task(buffers, has_wpe, has_positions);
  eellm_cpu_embed_fwd(t.n, t.out.cols, t.tokens, t.positions, seq_len, (const float *)t.wte.ptr,
                      t.wte.ld, vocab_lo, t.wte.rows, (const float *)t.wpe.ptr, t.wpe.ld,
                      t.wpe.rows, (float *)t.out.ptr, t.out.ld);
}

/* tokens [N] int32, wte [V, D], wpe [C, D] (optional), out [N, D]. */
static void embed_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  eellm_embed_rows_cpu(buffers, args->has_wpe, 0, args->seq_len, args->vocab_lo);
}

/* tokens [N] int32, dout [N, D], dwte [V, D] (+=), dwpe [C, D] (+=, optional). */
struct embed_bwd_task {
  const int32_t *tokens;
  size_t n;
  struct eellm_tensor_view dout, dwte, dwpe;
};

static struct embed_bwd_task embed_bwd_task(void *buffers[], int has_wpe) {
  struct embed_bwd_task t = {.tokens = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[0]),
                             .n = STARPU_VECTOR_GET_NX(buffers[0]),
                             .dout = eellm_tensor_view(buffers[1]),
                             .dwte = eellm_tensor_view(buffers[2])};
  if (has_wpe) t.dwpe = eellm_tensor_view(buffers[3]);
  return t;
}

static void embed_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  struct embed_bwd_task t = embed_bwd_task(buffers, args->has_wpe);
  eellm_cpu_embed_bwd(t.n, t.dout.cols, t.tokens, args->seq_len, (const float *)t.dout.ptr,
                      t.dout.ld, (float *)t.dwte.ptr, t.dwte.ld, args->vocab_lo, t.dwte.rows,
                      (float *)t.dwpe.ptr, t.dwpe.ld);
}

#ifdef STARPU_USE_CUDA
void eellm_embed_rows_cuda(void *buffers[], int has_wpe, int has_positions, unsigned seq_len,
                           size_t vocab_lo) {
  struct embed_fwd_task t = embed_fwd_task(buffers, has_wpe, has_positions);
  eellm_cuda_embed_fwd(t.n, t.out.cols, t.tokens, t.positions, seq_len, (const float *)t.wte.ptr,
                       t.wte.ld, vocab_lo, t.wte.rows, (const float *)t.wpe.ptr, t.wpe.ld,
                       t.wpe.rows, (float *)t.out.ptr, t.out.ld, starpu_cuda_get_local_stream());
}

static void embed_fwd_cuda(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  eellm_embed_rows_cuda(buffers, args->has_wpe, 0, args->seq_len, args->vocab_lo);
}

static void embed_bwd_cuda(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  struct embed_bwd_task t = embed_bwd_task(buffers, args->has_wpe);
  eellm_cuda_embed_bwd(t.n, t.dout.cols, t.tokens, args->seq_len, (const float *)t.dout.ptr,
                       t.dout.ld, (float *)t.dwte.ptr, t.dwte.ld, args->vocab_lo, t.dwte.rows,
                       (float *)t.dwpe.ptr, t.dwpe.ld, starpu_cuda_get_local_stream());
}
#endif

void eellm_insert_embed_fwd(starpu_data_handle_t tokens, starpu_data_handle_t wte,
                            starpu_data_handle_t wpe, starpu_data_handle_t out, unsigned seq_len,
                            size_t vocab_lo, const struct eellm_task_info *info) {
  struct embed_args args = {.seq_len = seq_len, .has_wpe = wpe != NULL, .vocab_lo = vocab_lo};
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
                            size_t vocab_lo, const struct eellm_task_info *info) {
  struct embed_args args = {.seq_len = seq_len, .has_wpe = dwpe != NULL, .vocab_lo = vocab_lo};
  struct starpu_data_descr buffers[4];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dout, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dwte, STARPU_RW};
  if (dwpe) buffers[n++] = (struct starpu_data_descr){dwpe, STARPU_RW};
  eellm_submit(&embed_bwd_cl, buffers, n, &args, sizeof args, info);
}
