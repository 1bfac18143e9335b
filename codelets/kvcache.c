/* The ops of generation with key/value caches: embedding at explicit positions,
 * causal attention of new rows over a per-sequence cache (RoPE at absolute
 * positions, the rotate-half convention of attention.c), row gathering, and
 * setting a small input vector from the task's argument. */
#include "codelets.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct embed_at_args {
  int has_wpe;
};

struct attention_cached_args {
  unsigned capacity, n_heads;
  int rope;
  float rope_theta;
};

static void *scratch(size_t bytes, const char *what) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "eellm: %s: out of memory for %zu scratch bytes\n", what, bytes);
    abort();
  }
  return p;
}

/* An index outside its table would read or write another row's memory. */
static void check_index(const char *what, int32_t i, size_t n) {
  if (i < 0 || (size_t)i >= n) {
    fprintf(stderr, "eellm: %s %d outside 0..%zu\n", what, (int)i, n - 1);
    abort();
  }
}

/* ---- embedding at positions ---------------------------------------------- */

/* tokens [N] int32, positions [N] int32, wte [V, D], wpe [C, D] (optional), out [N, D]. */
static void embed_at_cpu(void *buffers[], void *cl_arg) {
  const struct embed_at_args *args = cl_arg;
  int b = 0;
  const int32_t *tokens = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[b]);
  size_t n_rows = STARPU_VECTOR_GET_NX(buffers[b++]);
  const int32_t *positions = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  const float *wte = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_wte = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t vocab = STARPU_MATRIX_GET_NY(buffers[b++]);
  const float *wpe = NULL;
  size_t ld_wpe = 0, context = 0;
  if (args->has_wpe) {
    wpe = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
    ld_wpe = STARPU_MATRIX_GET_LD(buffers[b]);
    context = STARPU_MATRIX_GET_NY(buffers[b++]);
  }
  float *out = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_out = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t dim = STARPU_MATRIX_GET_NX(buffers[b]);

  for (size_t n = 0; n < n_rows; n++) {
    check_index("embed_at: token id", tokens[n], vocab);
    const float *tok_row = wte + (size_t)tokens[n] * ld_wte;
    float *out_row = out + n * ld_out;
    if (!wpe) {
      memcpy(out_row, tok_row, dim * sizeof *out_row);
      continue;
    }
    check_index("embed_at: position", positions[n], context);
    const float *pos_row = wpe + (size_t)positions[n] * ld_wpe;
    for (size_t d = 0; d < dim; d++) out_row[d] = tok_row[d] + pos_row[d];
  }
}

/* ---- attention over the cache ------------------------------------------- */

struct cached_shape {
  size_t N, H, hd, D, capacity, cache_rows;
  size_t ld_qkv, ld_cache, ld_out;
};

/* cos/sin [hd/2] at position p: angle = p * theta^(-2i/hd), as attention.c's tables. */
static void rope_at(float *cos_t, float *sin_t, size_t p, size_t hd, float theta) {
  for (size_t i = 0; i < hd / 2; i++) {
    double freq = pow((double)theta, -2.0 * (double)i / (double)hd);
    cos_t[i] = (float)cos((double)p * freq);
    sin_t[i] = (float)sin((double)p * freq);
  }
}

/* y [hd] = x [hd] rotated: (x_i, x_{i+h}) -> (x_i c - x_{i+h} s, x_{i+h} c + x_i s). */
static void rotate(const float *x, float *y, size_t hd, const float *cos_t, const float *sin_t) {
  size_t half = hd / 2;
  for (size_t i = 0; i < half; i++) {
    y[i] = x[i] * cos_t[i] - x[i + half] * sin_t[i];
    y[i + half] = x[i + half] * cos_t[i] + x[i] * sin_t[i];
  }
}

/* Stores every row's key (rotated) and value at its cache row. */
static void store_kv(const struct cached_shape *s, const struct attention_cached_args *args,
                     const float *qkv, const int32_t *positions, const int32_t *slots,
                     float *cache, float *cos_t, float *sin_t) {
  for (size_t n = 0; n < s->N; n++) {
    check_index("attention_cached: position", positions[n], s->capacity);
    check_index("attention_cached: slot", slots[n], s->cache_rows / s->capacity);
    const float *k = qkv + n * s->ld_qkv + s->D;
    float *dst = cache + ((size_t)slots[n] * s->capacity + (size_t)positions[n]) * s->ld_cache;
    if (args->rope) {
      rope_at(cos_t, sin_t, (size_t)positions[n], s->hd, args->rope_theta);
      for (size_t h = 0; h < s->H; h++) rotate(k + h * s->hd, dst + h * s->hd, s->hd, cos_t, sin_t);
    } else {
      memcpy(dst, k, s->D * sizeof *dst);
    }
    memcpy(dst + s->D, k + s->D, s->D * sizeof *dst);
  }
}

/* Rows n0 .. n0 + nr - 1 of one slot at consecutive positions p0 ..: per head,
 * scores [nr, keys] = Q K^T / sqrt(hd) over the slot's keys 0 .. p0 + nr - 1,
 * masked so row i sees keys 0 .. p0 + i, softmax, out = P V. q_rot [nr, hd] and
 * scores [nr, keys] are scratch. */
static void attend_block(const struct cached_shape *s, const struct attention_cached_args *args,
                         const float *qkv, const float *slot_cache, float *out, size_t n0,
                         size_t nr, size_t p0, float *q_rot, float *scores, float *cos_t,
                         float *sin_t) {
  size_t keys = p0 + nr, hd = s->hd;
  float scale = 1.0f / sqrtf((float)hd);
  for (size_t h = 0; h < s->H; h++) {
    const float *q = qkv + n0 * s->ld_qkv + h * hd;
    size_t ld_q = s->ld_qkv;
    if (args->rope) {
      for (size_t i = 0; i < nr; i++) {
        rope_at(cos_t, sin_t, p0 + i, hd, args->rope_theta);
        rotate(q + i * s->ld_qkv, q_rot + i * hd, hd, cos_t, sin_t);
      }
      q = q_rot;
      ld_q = hd;
    }
    const float *k = slot_cache + h * hd, *v = slot_cache + s->D + h * hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)keys, (int)hd, scale, q,
                (int)ld_q, k, (int)s->ld_cache, 0.0f, scores, (int)keys);
    for (size_t i = 0; i < nr; i++) {
      float *row = scores + i * keys;
      size_t seen = p0 + i + 1;
      float max = row[0];
      for (size_t j = 1; j < seen; j++) max = row[j] > max ? row[j] : max;
      double sum = 0;
      for (size_t j = 0; j < seen; j++) {
        row[j] = expf(row[j] - max);
        sum += row[j];
      }
      float inv_sum = (float)(1.0 / sum);
      for (size_t j = 0; j < seen; j++) row[j] *= inv_sum;
      for (size_t j = seen; j < keys; j++) row[j] = 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)hd, (int)keys, 1.0f,
                scores, (int)keys, v, (int)s->ld_cache, 0.0f, out + n0 * s->ld_out + h * hd,
                (int)s->ld_out);
  }
}

/* Rows from n on that share n's slot at consecutive positions. */
static size_t block_len(const int32_t *positions, const int32_t *slots, size_t n, size_t N) {
  size_t end = n + 1;
  while (end < N && slots[end] == slots[n] && positions[end] == positions[end - 1] + 1) end++;
  return end - n;
}

/* qkv [N, 3D] (R), positions [N] int32 (R), slots [N] int32 (R),
 * cache [S * capacity, 2D] (RW), out [N, D] (W). */
static void attention_cached_cpu(void *buffers[], void *cl_arg) {
  const struct attention_cached_args *args = cl_arg;
  const float *qkv = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  const int32_t *positions = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]);
  const int32_t *slots = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[2]);
  float *cache = (float *)STARPU_MATRIX_GET_PTR(buffers[3]);
  float *out = (float *)STARPU_MATRIX_GET_PTR(buffers[4]);
  struct cached_shape s = {.N = STARPU_MATRIX_GET_NY(buffers[0]),
                           .H = args->n_heads,
                           .D = STARPU_MATRIX_GET_NX(buffers[0]) / 3,
                           .capacity = args->capacity,
                           .cache_rows = STARPU_MATRIX_GET_NY(buffers[3]),
                           .ld_qkv = STARPU_MATRIX_GET_LD(buffers[0]),
                           .ld_cache = STARPU_MATRIX_GET_LD(buffers[3]),
                           .ld_out = STARPU_MATRIX_GET_LD(buffers[4])};
  s.hd = s.D / s.H;

  size_t max_rows = 0, max_keys = 0;
  for (size_t n = 0, nr; n < s.N; n += nr) {
    nr = block_len(positions, slots, n, s.N);
    max_rows = nr > max_rows ? nr : max_rows;
    max_keys = (size_t)positions[n] + nr > max_keys ? (size_t)positions[n] + nr : max_keys;
  }
  /* cos, sin [hd/2] each, q_rot [max_rows, hd], scores [max_rows, max_keys]. */
  float *work = scratch((s.hd + max_rows * s.hd + max_rows * max_keys) * sizeof(float),
                        "attention_cached");
  float *cos_t = work, *sin_t = work + s.hd / 2, *q_rot = work + s.hd;
  float *scores = q_rot + max_rows * s.hd;

  store_kv(&s, args, qkv, positions, slots, cache, cos_t, sin_t);
  for (size_t n = 0, nr; n < s.N; n += nr) {
    nr = block_len(positions, slots, n, s.N);
    const float *slot_cache = cache + (size_t)slots[n] * s.capacity * s.ld_cache;
    attend_block(&s, args, qkv, slot_cache, out, n, nr, (size_t)positions[n], q_rot, scores,
                 cos_t, sin_t);
  }
  free(work);
}

/* ---- row gathering --------------------------------------------------------- */

/* src [N, D], index [M] int32, dst [M, D]. */
static void gather_rows_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  const float *src = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t ld_src = STARPU_MATRIX_GET_LD(buffers[0]), n_src = STARPU_MATRIX_GET_NY(buffers[0]);
  const int32_t *index = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]);
  float *dst = (float *)STARPU_MATRIX_GET_PTR(buffers[2]);
  size_t ld_dst = STARPU_MATRIX_GET_LD(buffers[2]), n_dst = STARPU_MATRIX_GET_NY(buffers[2]);
  size_t dim = STARPU_MATRIX_GET_NX(buffers[2]);
  for (size_t m = 0; m < n_dst; m++) {
    check_index("gather_rows: row", index[m], n_src);
    memcpy(dst + m * ld_dst, src + (size_t)index[m] * ld_src, dim * sizeof *dst);
  }
}

/* ---- vector set -------------------------------------------------------------- */

/* v [N] (W) = cl_arg's N elements. */
static void vector_set_cpu(void *buffers[], void *cl_arg) {
  memcpy((void *)STARPU_VECTOR_GET_PTR(buffers[0]), cl_arg,
         STARPU_VECTOR_GET_NX(buffers[0]) * STARPU_VECTOR_GET_ELEMSIZE(buffers[0]));
}

static struct starpu_perfmodel embed_at_model = {.type = STARPU_HISTORY_BASED,
                                                 .symbol = "eellm_embed_at"};
static struct starpu_perfmodel attention_cached_model = {.type = STARPU_HISTORY_BASED,
                                                         .symbol = "eellm_attention_cached"};
static struct starpu_perfmodel gather_rows_model = {.type = STARPU_HISTORY_BASED,
                                                    .symbol = "eellm_gather_rows"};

static struct starpu_perfmodel vector_set_model = {.type = STARPU_HISTORY_BASED,
                                                   .symbol = "eellm_vector_set"};

static struct starpu_codelet embed_at_cl = {.cpu_funcs = {embed_at_cpu},
                                            .cpu_funcs_name = {"embed_at_cpu"},
                                            .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                            .model = &embed_at_model,
                                            .name = "embed_at"};
static struct starpu_codelet attention_cached_cl = {.cpu_funcs = {attention_cached_cpu},
                                                    .cpu_funcs_name = {"attention_cached_cpu"},
                                                    .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                                    .model = &attention_cached_model,
                                                    .name = "attention_cached"};
static struct starpu_codelet gather_rows_cl = {.cpu_funcs = {gather_rows_cpu},
                                               .cpu_funcs_name = {"gather_rows_cpu"},
                                               .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                               .model = &gather_rows_model,
                                               .name = "gather_rows"};

static struct starpu_codelet vector_set_cl = {.cpu_funcs = {vector_set_cpu},
                                              .cpu_funcs_name = {"vector_set_cpu"},
                                              .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                              .model = &vector_set_model,
                                              .name = "vector_set"};

void eellm_insert_embed_at(starpu_data_handle_t tokens, starpu_data_handle_t positions,
                           starpu_data_handle_t wte, starpu_data_handle_t wpe,
                           starpu_data_handle_t out, const struct eellm_task_info *info) {
  struct embed_at_args args = {.has_wpe = wpe != NULL};
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){positions, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){wte, STARPU_R};
  if (wpe) buffers[n++] = (struct starpu_data_descr){wpe, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){out, STARPU_W};
  eellm_submit(&embed_at_cl, buffers, n, &args, sizeof args, info);
}

/* Wrong widths or capacities would make the kernel read or write past rows. */
static void check_cache_shapes(starpu_data_handle_t qkv, starpu_data_handle_t cache,
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
}

void eellm_insert_attention_cached(starpu_data_handle_t qkv, starpu_data_handle_t positions,
                                   starpu_data_handle_t slots, starpu_data_handle_t cache,
                                   starpu_data_handle_t out, unsigned capacity, unsigned n_heads,
                                   int rope, float rope_theta, const struct eellm_task_info *info) {
  check_cache_shapes(qkv, cache, capacity, n_heads, rope);
  struct attention_cached_args args = {capacity, n_heads, rope, rope_theta};
  struct starpu_data_descr buffers[] = {
      {qkv, STARPU_R},    {positions, STARPU_R}, {slots, STARPU_R},
      {cache, STARPU_RW}, {out, STARPU_W},
  };
  eellm_submit(&attention_cached_cl, buffers, 5, &args, sizeof args, info);
}

void eellm_insert_gather_rows(starpu_data_handle_t src, starpu_data_handle_t index,
                              starpu_data_handle_t dst, const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{src, STARPU_R}, {index, STARPU_R}, {dst, STARPU_W}};
  eellm_submit(&gather_rows_cl, buffers, 3, NULL, 0, info);
}

void eellm_insert_vector_set(starpu_data_handle_t v, const void *data,
                             const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{v, STARPU_W}};
  eellm_submit(&vector_set_cl, buffers, 1, data,
               starpu_vector_get_nx(v) * starpu_vector_get_elemsize(v), info);
}
