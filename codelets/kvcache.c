/* StarPU glue of the ops of generation with key/value caches: embedding at
 * explicit positions (the embedding kernel of cpu/embedding.c), causal attention
 * of new rows over a per-sequence cache (cpu/attention.c: the RoPE and the
 * attention routine of training), and row gathering (cpu/tensor.c). */
#include "glue.h"

struct attention_cached_args {
  unsigned capacity, n_heads;
  int rope;
  float rope_theta;
};

EELLM_CODELET(embed_at)
EELLM_CODELET(attention_cached)
EELLM_CODELET(gather_rows)

/* tokens [N] int32, positions [N] int32, wte [V, D], wpe [C, D] (optional), out [N, D]. */
static void embed_at_cpu(void *buffers[], void *cl_arg) {
  int has_wpe = *(const int *)cl_arg, b = 3;
  struct eellm_tensor_view wpe = {0};
  if (has_wpe) wpe = eellm_tensor_view(buffers[b++]);
  struct eellm_tensor_view out = eellm_tensor_view(buffers[b]);
  eellm_cpu_embed_fwd(STARPU_VECTOR_GET_NX(buffers[0]), out.cols,
                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[0]),
                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]), 0,
                      (const float *)STARPU_MATRIX_GET_PTR(buffers[2]),
                      STARPU_MATRIX_GET_LD(buffers[2]), STARPU_MATRIX_GET_NY(buffers[2]),
                      (const float *)wpe.ptr, wpe.ld, wpe.rows, (float *)out.ptr, out.ld);
}

/* qkv [N, 3D] (R), positions [N] int32 (R), slots [N] int32 (R),
 * cache [S * capacity, 2D] (RW), out [N, D] (W), work (SCRATCH). */
static void attention_cached_cpu(void *buffers[], void *cl_arg) {
  const struct attention_cached_args *a = cl_arg;
  size_t D = STARPU_MATRIX_GET_NX(buffers[0]) / 3;
  eellm_cpu_attention_cached(
      STARPU_MATRIX_GET_NY(buffers[0]), a->n_heads, D / a->n_heads, a->capacity,
      STARPU_MATRIX_GET_NY(buffers[3]) / a->capacity, a->rope, a->rope_theta,
      (const float *)STARPU_MATRIX_GET_PTR(buffers[0]), STARPU_MATRIX_GET_LD(buffers[0]),
      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[2]),
      (float *)STARPU_MATRIX_GET_PTR(buffers[3]), STARPU_MATRIX_GET_LD(buffers[3]),
      (float *)STARPU_MATRIX_GET_PTR(buffers[4]), STARPU_MATRIX_GET_LD(buffers[4]),
      (void *)STARPU_VECTOR_GET_PTR(buffers[5]));
}

/* src [N, D], index [M] int32, dst [M, D]. */
static void gather_rows_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  eellm_cpu_gather_rows(STARPU_MATRIX_GET_NY(buffers[2]), STARPU_MATRIX_GET_NX(buffers[2]),
                        (const float *)STARPU_MATRIX_GET_PTR(buffers[0]),
                        STARPU_MATRIX_GET_LD(buffers[0]), STARPU_MATRIX_GET_NY(buffers[0]),
                        (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
                        (float *)STARPU_MATRIX_GET_PTR(buffers[2]),
                        STARPU_MATRIX_GET_LD(buffers[2]));
}

void eellm_insert_embed_at(starpu_data_handle_t tokens, starpu_data_handle_t positions,
                           starpu_data_handle_t wte, starpu_data_handle_t wpe,
                           starpu_data_handle_t out, const struct eellm_task_info *info) {
  int has_wpe = wpe != NULL;
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){positions, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){wte, STARPU_R};
  if (wpe) buffers[n++] = (struct starpu_data_descr){wpe, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){out, STARPU_W};
  eellm_submit(&embed_at_cl, buffers, n, &has_wpe, sizeof has_wpe, info);
}

/* Wrong widths or capacities would make the kernel read or write past rows.
 * Returns the head size. */
static size_t check_cache_shapes(starpu_data_handle_t qkv, starpu_data_handle_t cache,
                                 unsigned capacity, unsigned n_heads, int rope) {
  size_t width = starpu_matrix_get_nx(qkv), cache_width = starpu_matrix_get_nx(cache);
  size_t cache_rows = starpu_matrix_get_ny(cache);
  int ok = n_heads > 0 && capacity > 0 && width % (3 * (size_t)n_heads) == 0 &&
           cache_width * 3 == width * 2 && cache_rows % capacity == 0 &&
           (!rope || (width / (3 * (size_t)n_heads)) % 2 == 0);
  if (!ok) {
    fprintf(stderr,
            "eellm: attention_cached: qkv [., %zu] and cache [%zu, %zu] do not fit %u heads, "
            "capacity %u%s\n",
            width, cache_rows, cache_width, n_heads, capacity,
            rope ? " and an even RoPE head size" : "");
    abort();
  }
  return width / (3 * (size_t)n_heads);
}

void eellm_insert_attention_cached(starpu_data_handle_t qkv, starpu_data_handle_t positions,
                                   starpu_data_handle_t slots, starpu_data_handle_t cache,
                                   starpu_data_handle_t out, unsigned capacity, unsigned n_heads,
                                   int rope, float rope_theta, const struct eellm_task_info *info) {
  size_t hd = check_cache_shapes(qkv, cache, capacity, n_heads, rope);
  size_t work = eellm_cpu_attention_cached_work_bytes(starpu_matrix_get_ny(qkv), hd, capacity);
  struct attention_cached_args args = {capacity, n_heads, rope, rope_theta};
  struct starpu_data_descr buffers[] = {
      {qkv, STARPU_R},    {positions, STARPU_R}, {slots, STARPU_R},
      {cache, STARPU_RW}, {out, STARPU_W},       {eellm_scratch(work), STARPU_SCRATCH},
  };
  eellm_submit(&attention_cached_cl, buffers, 6, &args, sizeof args, info);
}

void eellm_insert_gather_rows(starpu_data_handle_t src, starpu_data_handle_t index,
                              starpu_data_handle_t dst, const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{src, STARPU_R}, {index, STARPU_R}, {dst, STARPU_W}};
  eellm_submit(&gather_rows_cl, buffers, 3, NULL, 0, info);
}
