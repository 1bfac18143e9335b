/* StarPU glue of causal multi-head self-attention on packed qkv (kernels in
 * cpu/attention.c). One task handles every sequence and head of its rows. */
#include "glue.h"

struct attention_args {
  unsigned seq_len, n_heads;
  int rope;
  float rope_theta;
  int beta_dx; /* backward only */
};

EELLM_CODELET(attention_fwd)
EELLM_CODELET(attention_bwd)

/* qkv [N, 3D] (R), out [N, D] (W), lse [N, H] (W), work (SCRATCH). */
static void attention_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct attention_args *a = cl_arg;
  size_t D = STARPU_MATRIX_GET_NX(buffers[0]) / 3;
  eellm_cpu_attention_fwd(STARPU_MATRIX_GET_NY(buffers[0]) / a->seq_len, a->seq_len, a->n_heads,
                          D / a->n_heads, a->rope, a->rope_theta,
                          (const float *)STARPU_MATRIX_GET_PTR(buffers[0]),
                          STARPU_MATRIX_GET_LD(buffers[0]),
                          (float *)STARPU_MATRIX_GET_PTR(buffers[1]),
                          STARPU_MATRIX_GET_LD(buffers[1]),
                          (float *)STARPU_MATRIX_GET_PTR(buffers[2]),
                          STARPU_MATRIX_GET_LD(buffers[2]),
                          (void *)STARPU_VECTOR_GET_PTR(buffers[3]));
}

/* qkv [N, 3D] (R), lse [N, H] (R), dout [N, D] (R), dqkv [N, 3D] (W or RW), work (SCRATCH). */
static void attention_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct attention_args *a = cl_arg;
  size_t D = STARPU_MATRIX_GET_NX(buffers[0]) / 3;
  eellm_cpu_attention_bwd(STARPU_MATRIX_GET_NY(buffers[0]) / a->seq_len, a->seq_len, a->n_heads,
                          D / a->n_heads, a->rope, a->rope_theta, a->beta_dx,
                          (const float *)STARPU_MATRIX_GET_PTR(buffers[0]),
                          STARPU_MATRIX_GET_LD(buffers[0]),
                          (const float *)STARPU_MATRIX_GET_PTR(buffers[1]),
                          STARPU_MATRIX_GET_LD(buffers[1]),
                          (const float *)STARPU_MATRIX_GET_PTR(buffers[2]),
                          STARPU_MATRIX_GET_LD(buffers[2]),
                          (float *)STARPU_MATRIX_GET_PTR(buffers[3]),
                          STARPU_MATRIX_GET_LD(buffers[3]),
                          (void *)STARPU_VECTOR_GET_PTR(buffers[4]));
}

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

void eellm_insert_attention_fwd(starpu_data_handle_t qkv, starpu_data_handle_t out,
                                starpu_data_handle_t lse, unsigned seq_len, unsigned n_heads,
                                int rope, float rope_theta, const struct eellm_task_info *info) {
  size_t hd = check_qkv_shape(qkv, seq_len, n_heads, rope);
  struct attention_args args = {seq_len, n_heads, rope, rope_theta, 0};
  struct starpu_data_descr buffers[] = {
      {qkv, STARPU_R},
      {out, STARPU_W},
      {lse, STARPU_W},
      {eellm_scratch(eellm_cpu_attention_work_bytes(seq_len, hd, rope, 0)), STARPU_SCRATCH},
  };
  eellm_submit(&attention_fwd_cl, buffers, 4, &args, sizeof args, info);
}

void eellm_insert_attention_bwd(starpu_data_handle_t qkv, starpu_data_handle_t lse,
                                starpu_data_handle_t dout, starpu_data_handle_t dqkv,
                                unsigned seq_len, unsigned n_heads, int rope, float rope_theta,
                                int beta_dx, const struct eellm_task_info *info) {
  size_t hd = check_qkv_shape(qkv, seq_len, n_heads, rope);
  struct attention_args args = {seq_len, n_heads, rope, rope_theta, beta_dx};
  struct starpu_data_descr buffers[] = {
      {qkv, STARPU_R},
      {lse, STARPU_R},
      {dout, STARPU_R},
      {dqkv, beta_dx ? STARPU_RW : STARPU_W},
      {eellm_scratch(eellm_cpu_attention_work_bytes(seq_len, hd, rope, 1)), STARPU_SCRATCH},
  };
  eellm_submit(&attention_bwd_cl, buffers, 5, &args, sizeof args, info);
}
