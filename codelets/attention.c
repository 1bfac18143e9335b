/* StarPU glue of causal multi-head self-attention on packed qkv (kernels in
 * cpu/attention.c and cuda/attention.cu). One task handles every sequence and
 * head of its rows. */
#include "glue.h"

struct attention_args {
  unsigned seq_len, n_heads;
  int rope;
  float rope_theta;
  int beta_dx; /* backward only */
};

EELLM_CODELET(attention_fwd)
EELLM_CODELET(attention_bwd)

/* A task's sizes and buffers: fwd qkv, out, lse, work; bwd qkv, lse, dout, dqkv, work. */
struct attention_task {
  size_t n_seq, H, hd;
  struct eellm_tensor_view t[4];
  void *work;
};

static struct attention_task attention_task(void *buffers[], const struct attention_args *a,
                                            int n_tensors) {
  struct attention_task task = {0};
  for (int i = 0; i < n_tensors; i++) task.t[i] = eellm_tensor_view(buffers[i]);
  task.n_seq = task.t[0].rows / a->seq_len;
  task.H = a->n_heads;
  task.hd = task.t[0].cols / 3 / a->n_heads;
  task.work = (void *)STARPU_VECTOR_GET_PTR(buffers[n_tensors]);
  return task;
}

/* qkv [N, 3D] (R), out [N, D] (W), lse [N, H] (W), work (SCRATCH). */
static void attention_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct attention_args *a = cl_arg;
  struct attention_task k = attention_task(buffers, a, 3);
  eellm_cpu_attention_fwd(k.n_seq, a->seq_len, k.H, k.hd, a->rope, a->rope_theta,
                          (const float *)k.t[0].ptr, k.t[0].ld, (float *)k.t[1].ptr, k.t[1].ld,
                          (float *)k.t[2].ptr, k.t[2].ld, k.work);
}

/* qkv [N, 3D] (R), lse [N, H] (R), dout [N, D] (R), dqkv [N, 3D] (W or RW), work (SCRATCH). */
static void attention_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct attention_args *a = cl_arg;
  struct attention_task k = attention_task(buffers, a, 4);
  eellm_cpu_attention_bwd(k.n_seq, a->seq_len, k.H, k.hd, a->rope, a->rope_theta, a->beta_dx,
                          (const float *)k.t[0].ptr, k.t[0].ld, (const float *)k.t[1].ptr,
                          k.t[1].ld, (const float *)k.t[2].ptr, k.t[2].ld, (float *)k.t[3].ptr,
                          k.t[3].ld, k.work);
}

#ifdef STARPU_USE_CUDA
static void attention_fwd_cuda(void *buffers[], void *cl_arg) {
  const struct attention_args *a = cl_arg;
  struct attention_task k = attention_task(buffers, a, 3);
  eellm_cuda_attention_fwd(k.n_seq, a->seq_len, k.H, k.hd, a->rope, a->rope_theta,
                           (const float *)k.t[0].ptr, k.t[0].ld, (float *)k.t[1].ptr, k.t[1].ld,
                           (float *)k.t[2].ptr, k.t[2].ld, k.work, starpu_cuda_get_local_stream());
}

static void attention_bwd_cuda(void *buffers[], void *cl_arg) {
  const struct attention_args *a = cl_arg;
  struct attention_task k = attention_task(buffers, a, 4);
  eellm_cuda_attention_bwd(k.n_seq, a->seq_len, k.H, k.hd, a->rope, a->rope_theta, a->beta_dx,
                           (const float *)k.t[0].ptr, k.t[0].ld, (const float *)k.t[1].ptr,
                           k.t[1].ld, (const float *)k.t[2].ptr, k.t[2].ld, (float *)k.t[3].ptr,
                           k.t[3].ld, k.work, starpu_cuda_get_local_stream());
}
#endif

/* Wrong head counts or sequence lengths would make the kernels read past rows.
 * Returns the head size. */
static size_t check_qkv_shape(starpu_data_handle_t qkv, unsigned seq_len, unsigned n_heads,
                              int rope) {
  size_t width = starpu_matrix_get_nx(qkv), rows = starpu_matrix_get_ny(qkv);
  int ok = seq_len > 0 && n_heads > 0 && width % (3 * (size_t)n_heads) == 0 &&
           rows % seq_len == 0 && (!rope || (width / (3 * (size_t)n_heads)) % 2 == 0);
  if (!ok) {
    fprintf(stderr,
            "eellm: attention: qkv [%zu, %zu] does not fit seq_len %u, %u heads%s\n", rows,
            width, seq_len, n_heads, rope ? " and an even RoPE head size" : "");
    abort();
  }
  return width / (3 * (size_t)n_heads);
}

/* Submits an attention task with its scratch (the larger of the CPU's and the
 * GPU's work); heads too large for the CUDA kernels stay on the CPU. */
static void submit_attention(struct starpu_codelet *cl, struct starpu_data_descr *buffers, int n,
                             const struct attention_args *args,
                             const struct eellm_task_info *info) {
  starpu_data_handle_t qkv = buffers[0].handle;
  size_t hd = check_qkv_shape(qkv, args->seq_len, args->n_heads, args->rope);
  int backward = cl == &attention_bwd_cl;
  size_t work = EELLM_WORK_BYTES(
      eellm_cpu_attention_work_bytes(args->seq_len, hd, args->rope, backward),
      eellm_cuda_attention_work_bytes(starpu_matrix_get_ny(qkv) / args->seq_len, args->seq_len,
                                      args->n_heads, hd, args->rope, backward));
  n = eellm_add_scratch(buffers, n, work);
  struct eellm_task_info pinned;
  info = eellm_cpu_unless(EELLM_CUDA_FITS(hd <= EELLM_CUDA_MAX_HEAD_DIM), info, &pinned, cl->name);
  /* Model FLOPs, as MFU counts them: per head, q k^T and p v over the T (T + 1) / 2 causal
   * pairs of each sequence, 2 hd FLOPs each; the backward twice the forward. */
  double T = args->seq_len, sequences = (double)starpu_matrix_get_ny(qkv) / T;
  struct eellm_task_info counted = *info;
  counted.flops = (backward ? 2 : 1) * sequences * args->n_heads * 2 * (T * (T + 1) / 2) * 2.0 * hd;
  eellm_submit(cl, buffers, n, args, sizeof *args, &counted);
}

void eellm_insert_attention_fwd(starpu_data_handle_t qkv, starpu_data_handle_t out,
                                starpu_data_handle_t lse, unsigned seq_len, unsigned n_heads,
                                int rope, float rope_theta, const struct eellm_task_info *info) {
  struct attention_args args = {seq_len, n_heads, rope, rope_theta, 0};
  struct starpu_data_descr buffers[4] = {{qkv, STARPU_R}, {out, STARPU_W}, {lse, STARPU_W}};
  submit_attention(&attention_fwd_cl, buffers, 3, &args, info);
}

void eellm_insert_attention_bwd(starpu_data_handle_t qkv, starpu_data_handle_t lse,
                                starpu_data_handle_t dout, starpu_data_handle_t dqkv,
                                unsigned seq_len, unsigned n_heads, int rope, float rope_theta,
                                int beta_dx, const struct eellm_task_info *info) {
  struct attention_args args = {seq_len, n_heads, rope, rope_theta, beta_dx};
  struct starpu_data_descr buffers[5] = {
      {qkv, STARPU_R}, {lse, STARPU_R}, {dout, STARPU_R}, {dqkv, beta_dx ? STARPU_RW : STARPU_W}};
  submit_attention(&attention_bwd_cl, buffers, 4, &args, info);
}
