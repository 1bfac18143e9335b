/* StarPU glue of the ops of generation with key/value caches: embedding at
 * explicit positions (the embedding kernel of cpu/embedding.c), causal attention
 * of new rows over a per-sequence cache (cpu/attention.c: the RoPE and the
 * attention routine of training; cuda/attention.cu), and row gathering
 * (cpu/tensor.c, cuda/tensor.cu). */
#include "glue.h"

struct attention_cached_args {
  unsigned capacity, n_heads;
  int rope;
  float rope_theta;
};

EELLM_CODELET(embed_at)
EELLM_CODELET(attention_cached)
EELLM_CODELET(gather_rows)

struct embed_at_args {
  int has_wpe;
  size_t vocab_lo;
};

/* tokens [N] int32, positions [N] int32, wte [V, D], wpe [C, D] (optional), out [N, D]. */
static void embed_at_cpu(void *buffers[], void *cl_arg) {
  const struct embed_at_args *a = cl_arg;
  eellm_embed_rows_cpu(buffers, a->has_wpe, 1, 0, a->vocab_lo);
}

/* qkv [N, 3D] (R), positions [N] int32 (R), slots [N] int32 (R),
 * cache [S * capacity, 2D] (RW), out [N, D] (W), work (SCRATCH). */
struct cached_task {
  size_t hd, n_slots;
  struct eellm_tensor_view qkv, cache, out;
  const int32_t *positions, *slots;
};

static struct cached_task cached_task(void *buffers[], const struct attention_cached_args *a) {
  struct cached_task t = {.qkv = eellm_tensor_view(buffers[0]),
                          .cache = eellm_tensor_view(buffers[3]),
                          .out = eellm_tensor_view(buffers[4]),
                          .positions = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
                          .slots = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[2])};
  t.hd = t.qkv.cols / 3 / a->n_heads;
  t.n_slots = t.cache.rows / a->capacity;
  return t;
}

static void attention_cached_cpu(void *buffers[], void *cl_arg) {
  const struct attention_cached_args *a = cl_arg;
  struct cached_task t = cached_task(buffers, a);
  eellm_cpu_attention_cached(t.qkv.rows, a->n_heads, t.hd, a->capacity, t.n_slots, a->rope,
                             a->rope_theta, (const float *)t.qkv.ptr, t.qkv.ld, t.positions,
                             t.slots, (float *)t.cache.ptr, t.cache.ld, (float *)t.out.ptr,
                             t.out.ld, (void *)STARPU_VECTOR_GET_PTR(buffers[5]));
}

/* src [N, D], index [M] int32, dst [M, D]. */
static void gather_rows_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view src = eellm_tensor_view(buffers[0]), dst = eellm_tensor_view(buffers[2]);
  eellm_cpu_gather_rows(dst.rows, dst.cols, (const float *)src.ptr, src.ld, src.rows,
                        (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]), (float *)dst.ptr,
                        dst.ld);
}

#ifdef STARPU_USE_CUDA
static void embed_at_cuda(void *buffers[], void *cl_arg) {
  const struct embed_at_args *a = cl_arg;
  eellm_embed_rows_cuda(buffers, a->has_wpe, 1, 0, a->vocab_lo);
}

static void attention_cached_cuda(void *buffers[], void *cl_arg) {
  const struct attention_cached_args *a = cl_arg;
  struct cached_task t = cached_task(buffers, a);
  eellm_cuda_attention_cached(t.qkv.rows, a->n_heads, t.hd, a->capacity, t.n_slots, a->rope,
                              a->rope_theta, (const float *)t.qkv.ptr, t.qkv.ld, t.positions,
                              t.slots, (float *)t.cache.ptr, t.cache.ld, (float *)t.out.ptr,
                              t.out.ld, starpu_cuda_get_local_stream());
}

static void gather_rows_cuda(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view src = eellm_tensor_view(buffers[0]), dst = eellm_tensor_view(buffers[2]);
  eellm_cuda_gather_rows(dst.rows, dst.cols, (const float *)src.ptr, src.ld, src.rows,
                         (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]), (float *)dst.ptr,
                         dst.ld, starpu_cuda_get_local_stream());
}
#endif

void eellm_insert_embed_at(starpu_data_handle_t tokens, starpu_data_handle_t positions,
                           starpu_data_handle_t wte, starpu_data_handle_t wpe,
                           starpu_data_handle_t out, size_t vocab_lo,
                           const struct eellm_task_info *info) {
  struct embed_at_args args = {wpe != NULL, vocab_lo};
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){positions, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){wte, STARPU_R};
  if (wpe) buffers[n++] = (struct starpu_data_descr){wpe, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){out, STARPU_W};
  eellm_submit(&embed_at_cl, buffers, n, &args, sizeof args, info);
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
  struct eellm_task_info pinned;
  info = eellm_cpu_unless(EELLM_CUDA_FITS(hd <= EELLM_CUDA_MAX_HEAD_DIM), info, &pinned,
                          "attention_cached");
  eellm_submit(&attention_cached_cl, buffers, 6, &args, sizeof args, info);
}

void eellm_insert_gather_rows(starpu_data_handle_t src, starpu_data_handle_t index,
                              starpu_data_handle_t dst, const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{src, STARPU_R}, {index, STARPU_R}, {dst, STARPU_W}};
  eellm_submit(&gather_rows_cl, buffers, 3, NULL, 0, info);
}
