/* Generation codelets (kvcache.c, sample.c) as real StarPU tasks against
 * double-precision references: embedding at explicit positions, row gathering,
 * setting an input vector (ordered with its readers), attention of new rows
 * over a key/value cache (the cache after the task and the output), the cached
 * attention fed a sequence piece by piece against the training attention on the
 * whole sequence, a whole layer over the cache as one task against the
 * layer's separate tasks, and the next-token choice (confidence by both rules, greedy,
 * and sampling with temperature, top-k and top-p for given uniforms, plus the
 * frequencies of many draws). No gradients: these ops only run forward. Every
 * case runs on every backend of the build (tu_for_each_backend). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "codelets/cpu/kernels.h"
#include "testutil.h"

#define RTOL 1e-5
#define ATOL 1e-6

/* tu_check after printing the worst absolute error. */
static void check(const char *what, const float *got, const double *want, size_t n, double rtol,
                  double atol) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
  printf("  [%s] %-62s max abs err %.2e\n", tu_backend_name(), what, worst);
  tu_check(what, got, want, n, rtol, atol);
}

static float *random_floats(size_t n, double lo, double hi) {
  float *x = tu_alloc(n);
  tu_fill(x, n, lo, hi);
  return x;
}

/* A [rows, cols] matrix stored with ld = cols + pad; the padding holds NaN, which
 * a kernel must neither read into results nor overwrite with anything else. */
static float *padded(size_t rows, size_t cols, size_t pad, double lo, double hi) {
  float *x = tu_alloc(rows * (cols + pad));
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols + pad; c++)
      x[r * (cols + pad) + c] = c < cols ? (float)tu_uniform(lo, hi) : NAN;
  return x;
}

static float *unpad(const float *x, size_t rows, size_t cols, size_t ld) {
  float *y = tu_alloc(rows * cols);
  for (size_t r = 0; r < rows; r++) memcpy(y + r * cols, x + r * ld, cols * sizeof *y);
  return y;
}

static int padding_is_nan(const float *x, size_t rows, size_t cols, size_t ld) {
  for (size_t r = 0; r < rows; r++)
    for (size_t c = cols; c < ld; c++)
      if (!isnan(x[r * ld + c])) return 0;
  return 1;
}

/* ---- embedding at positions ---------------------------------------------- */

static void test_embed_at(const struct eellm_task_info *ti, void *ctx) {
  int with_wpe = ctx != NULL;
  size_t N = 7, V = 37, D = 12, C = 9, pad = 3;
  int32_t tokens[7], positions[7] = {4, 0, 8, 3, 3, 1, 7};
  for (size_t n = 0; n < N; n++) tokens[n] = (int32_t)tu_uniform(0, (double)V);
  float *wte = random_floats(V * D, -1, 1), *wpe = random_floats(C * D, -1, 1);
  float *out = padded(N, D, pad, -1, 1);
  eellm_insert_embed_at(tu_vector_i32(tokens, N), tu_vector_i32(positions, N), tu_matrix(wte, V, D),
                        with_wpe ? tu_matrix(wpe, C, D) : NULL, tu_matrix_ld(out, N, D, D + pad), 0,
                        ti);
  tu_sync_all();
  double *want = tu_alloc_f64(N * D);
  for (size_t n = 0; n < N; n++)
    for (size_t d = 0; d < D; d++)
      want[n * D + d] = (double)wte[tokens[n] * D + d] +
                        (with_wpe ? (double)wpe[positions[n] * D + d] : 0.0);
  check(with_wpe ? "embed_at N=7 V=37 D=12 with wpe, padded out" : "embed_at without wpe (RoPE)",
        unpad(out, N, D, D + pad), want, N * D, RTOL, ATOL);
  tu_ok(padding_is_nan(out, N, D, D + pad), "embed_at leaves the padding alone");
}

/* ---- row gathering ----------------------------------------------------- */

static void test_gather_rows(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  size_t N = 7, M = 5, D = 13, pad = 2;
  int32_t index[5] = {6, 0, 3, 3, 1};
  float *src = padded(N, D, pad, -1, 1), *dst = padded(M, D, pad, -1, 1);
  eellm_insert_gather_rows(tu_matrix_ld(src, N, D, D + pad), tu_vector_i32(index, M),
                           tu_matrix_ld(dst, M, D, D + pad), ti);
  tu_sync_all();
  double *want = tu_alloc_f64(M * D);
  for (size_t m = 0; m < M; m++)
    for (size_t d = 0; d < D; d++) want[m * D + d] = src[index[m] * (D + pad) + d];
  check("gather_rows M=5 of N=7 (a repeated row), padded", unpad(dst, M, D, D + pad), want, M * D,
        0, 0);
  tu_ok(padding_is_nan(dst, M, D, D + pad), "gather_rows leaves the padding alone");
}

/* ---- vector set ------------------------------------------------------------ */

/* Two sets in a row on one vector, the first one read by a task in between:
 * each reader sees the content set before it. */
static void test_vector_set(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  int32_t first[3] = {2, 0, 1}, second[3] = {1, 1, 2}, v[3] = {-1, -1, -1};
  float *src = random_floats(3 * 4, -1, 1), *dst = tu_alloc(3 * 4);
  starpu_data_handle_t h_v = tu_vector_i32(v, 3);
  eellm_insert_vector_set(h_v, first, ti);
  eellm_insert_gather_rows(tu_matrix(src, 3, 4), h_v, tu_matrix(dst, 3, 4), ti);
  eellm_insert_vector_set(h_v, second, ti);
  tu_sync_all();
  int ok = memcmp(v, second, sizeof v) == 0;
  for (size_t r = 0; r < 3; r++)
    ok &= memcmp(dst + r * 4, src + first[r] * 4, 4 * sizeof *dst) == 0;
  tu_ok(ok, "vector_set: readers see the content set before them, the vector the last one");
}

/* ---- attention over the cache ------------------------------------------- */

struct cache_case {
  size_t H, D;
  int rope;
};

/* cache [S * C, 2D] (double, dense) after storing row n of qkv [N, ld_qkv]. */
static void ref_store(double *cache, const float *qkv, size_t ld_qkv, size_t n, size_t slot,
                      size_t pos, size_t C, const struct cache_case *c, double theta) {
  size_t hd = c->D / c->H;
  double *row = cache + (slot * C + pos) * 2 * c->D;
  for (size_t i = 0; i < 2 * c->D; i++) row[i] = qkv[n * ld_qkv + c->D + i];
  if (c->rope)
    for (size_t h = 0; h < c->H; h++) tu_ref_rope(row + h * hd, pos, hd, theta);
}

/* out row [D] of a query (row n of qkv) at position pos over the slot's cache rows 0..pos. */
static void ref_attend(const double *cache, const float *qkv, size_t ld_qkv, size_t n, size_t slot,
                       size_t pos, size_t C, const struct cache_case *c, double theta,
                       double *out) {
  size_t hd = c->D / c->H;
  double q[64], scores[64];
  for (size_t h = 0; h < c->H; h++) {
    for (size_t i = 0; i < hd; i++) q[i] = qkv[n * ld_qkv + h * hd + i];
    if (c->rope) tu_ref_rope(q, pos, hd, theta);
    double max = -INFINITY, sum = 0;
    for (size_t j = 0; j <= pos; j++) {
      const double *k = cache + (slot * C + j) * 2 * c->D + h * hd;
      double dot = 0;
      for (size_t i = 0; i < hd; i++) dot += q[i] * k[i];
      scores[j] = dot / sqrt((double)hd);
      max = fmax(max, scores[j]);
    }
    for (size_t j = 0; j <= pos; j++) sum += exp(scores[j] - max);
    for (size_t i = 0; i < hd; i++) {
      double acc = 0;
      for (size_t j = 0; j <= pos; j++)
        acc += exp(scores[j] - max) / sum * cache[(slot * C + j) * 2 * c->D + c->D + h * hd + i];
      out[h * hd + i] = acc;
    }
  }
}

/* Three slots of capacity 9 holding earlier positions; seven new rows: a block
 * of three in slot 2, one row in slot 0, a prefill of two in slot 1, and slot 0's
 * next position apart from its first block. */
static void test_attention_cached(const struct eellm_task_info *ti, void *ctx) {
  const struct cache_case *c = ctx;
  enum { S = 3, C = 9, N = 7 };
  int32_t slots[N] = {2, 2, 2, 0, 1, 1, 0}, positions[N] = {3, 4, 5, 6, 0, 1, 7};
  size_t D = c->D, pad_qkv = 3, pad_cache = 2, pad_out = 1;
  size_t ld_qkv = 3 * D + pad_qkv, ld_cache = 2 * D + pad_cache, ld_out = D + pad_out;
  float theta = 100.0f;
  float *qkv = padded(N, 3 * D, pad_qkv, -1.5, 1.5);
  float *cache = padded(S * C, 2 * D, pad_cache, -1.5, 1.5), *out = padded(N, D, pad_out, 0, 1);
  double *ref_cache = tu_to_f64(unpad(cache, S * C, 2 * D, ld_cache), S * C * 2 * D);
  eellm_insert_attention_cached(
      tu_matrix_ld(qkv, N, 3 * D, ld_qkv), tu_vector_i32(positions, N), tu_vector_i32(slots, N),
      tu_matrix_ld(cache, S * C, 2 * D, ld_cache), tu_matrix_ld(out, N, D, ld_out), C,
      (unsigned)c->H, c->rope, theta, ti);
  tu_sync_all();

  for (size_t n = 0; n < N; n++)
    ref_store(ref_cache, qkv, ld_qkv, n, (size_t)slots[n], (size_t)positions[n], C, c, theta);
  double *ref_out = tu_alloc_f64(N * D);
  for (size_t n = 0; n < N; n++)
    ref_attend(ref_cache, qkv, ld_qkv, n, (size_t)slots[n], (size_t)positions[n], C, c, theta,
               ref_out + n * D);
  char what[128];
  snprintf(what, sizeof what, "attention_cached H=%zu D=%zu rope %d: cache", c->H, D, c->rope);
  check(what, unpad(cache, S * C, 2 * D, ld_cache), ref_cache, S * C * 2 * D, RTOL, ATOL);
  snprintf(what, sizeof what, "attention_cached H=%zu D=%zu rope %d: out", c->H, D, c->rope);
  check(what, unpad(out, N, D, ld_out), ref_out, N * D, RTOL, ATOL);
  tu_ok(padding_is_nan(cache, S * C, 2 * D, ld_cache) && padding_is_nan(out, N, D, ld_out),
        "attention_cached leaves the padding alone");
}

/* One sequence of T rows: the training attention on all of it, against the cached
 * attention fed a prefill and then one row per task (slot 1 of 2). A prefill of more
 * than 8 rows with whole-vector heads takes the CPU kernel's tiled products. */
enum { PIECES_MAX_T = 40 };
struct pieces_case {
  const char *name;
  int rope;
  size_t T, H, D, C, prefill;
};

static void test_cached_matches_training(const struct eellm_task_info *ti, void *ctx) {
  const struct pieces_case *c = ctx;
  size_t T = c->T, H = c->H, D = c->D, C = c->C;
  float theta = 10000.0f;
  float *qkv = random_floats(T * 3 * D, -1.5, 1.5), *out_full = tu_alloc(T * D);
  float *lse = tu_alloc(T * H), *cache = tu_alloc(2 * C * 2 * D), *out_cached = tu_alloc(T * D);
  eellm_insert_attention_fwd(tu_matrix(qkv, T, 3 * D), tu_matrix(out_full, T, D),
                             tu_matrix(lse, T, H), (unsigned)T, (unsigned)H, c->rope, theta, ti);
  starpu_data_handle_t h_cache = tu_matrix(cache, 2 * C, 2 * D);
  static int32_t positions[PIECES_MAX_T], slots[PIECES_MAX_T]; /* read by later tasks */
  for (size_t t = 0; t < T; t++) {
    positions[t] = (int32_t)t;
    slots[t] = 1;
  }
  for (size_t first = 0; first < T;) {
    size_t rows = first == 0 ? c->prefill : 1;
    eellm_insert_attention_cached(
        tu_matrix(qkv + first * 3 * D, rows, 3 * D), tu_vector_i32(positions + first, rows),
        tu_vector_i32(slots + first, rows), h_cache, tu_matrix(out_cached + first * D, rows, D),
        (unsigned)C, (unsigned)H, c->rope, theta, ti);
    first += rows;
  }
  tu_sync_all();
  check(c->name, out_cached, tu_to_f64(out_full, T * D), T * D, RTOL, ATOL);
}

/* ---- a whole layer over the cache as one task ----------------------------- */

struct layer_case {
  const char *name;
  size_t H, hd, ffn;
  enum eellm_norm_kind norm;
  enum eellm_activation act;
  int rope, biases;
};

/* The layer tests' sizes: cache slots, capacity per slot, rows, model width. */
enum { LAYER_SLOTS = 2, LAYER_CAPACITY = 8, LAYER_ROWS = 3, LAYER_DIM = 16 };

/* The layer's tensors: gains near 1, biases (when the case has them) and weights small. */
static void layer_tensors(const struct layer_case *c, size_t D, starpu_data_handle_t t[]) {
  size_t att = c->H * c->hd, fc = c->act == EELLM_SWIGLU ? 2 * c->ffn : c->ffn;
  size_t rows[EELLM_LAYER_TENSORS] = {0, 0, D, 0, att, 0, 0, 0, D, 0, c->ffn, 0};
  size_t cols[EELLM_LAYER_TENSORS] = {D, D, 3 * att, 3 * att, D, D, D, D, fc, fc, D, D};
  for (int i = 0; i < EELLM_LAYER_TENSORS; i++) {
    int gain = i == EELLM_LN1_W || i == EELLM_LN2_W, weight = rows[i] > 0;
    int norm_bias = i == EELLM_LN1_B || i == EELLM_LN2_B;
    t[i] = NULL;
    if (!gain && !weight && (!c->biases || (norm_bias && c->norm == EELLM_RMSNORM))) continue;
    if (weight) {
      t[i] = tu_matrix(random_floats(rows[i] * cols[i], -0.3, 0.3), rows[i], cols[i]);
    } else {
      t[i] = tu_vector(random_floats(cols[i], gain ? 0.8 : -0.2, gain ? 1.2 : 0.2), cols[i]);
    }
  }
}

/* The separate tasks eellm_layer_forward submits for a cached layer. */
static void layer_by_tasks(const struct layer_case *c, size_t N, starpu_data_handle_t x,
                           const starpu_data_handle_t t[], starpu_data_handle_t pos,
                           starpu_data_handle_t slots, starpu_data_handle_t cache,
                           unsigned capacity, float theta, starpu_data_handle_t r,
                           starpu_data_handle_t y, const struct eellm_task_info *ti) {
  size_t D = starpu_matrix_get_nx(x), att = c->H * c->hd;
  size_t fc = c->act == EELLM_SWIGLU ? 2 * c->ffn : c->ffn;
  starpu_data_handle_t ln1 = tu_matrix(tu_alloc(N * D), N, D),
                       st1 = tu_matrix(tu_alloc(N * 2), N, 2);
  starpu_data_handle_t qkv = tu_matrix(tu_alloc(N * 3 * att), N, 3 * att);
  starpu_data_handle_t out = tu_matrix(tu_alloc(N * att), N, att);
  starpu_data_handle_t ln2 = tu_matrix(tu_alloc(N * D), N, D),
                       st2 = tu_matrix(tu_alloc(N * 2), N, 2);
  starpu_data_handle_t h = tu_matrix(tu_alloc(N * fc), N, fc);
  starpu_data_handle_t a = tu_matrix(tu_alloc(N * c->ffn), N, c->ffn);
  eellm_insert_norm_fwd(x, t[EELLM_LN1_W], t[EELLM_LN1_B], ln1, st1, c->norm, 1e-5f, ti);
  eellm_insert_linear_fwd(ln1, t[EELLM_QKV_W], t[EELLM_QKV_B], NULL, qkv, 0, ti);
  eellm_insert_attention_cached(qkv, pos, slots, cache, out, capacity, (unsigned)c->H, c->rope,
                                theta, ti);
  eellm_insert_linear_fwd(out, t[EELLM_O_W], t[EELLM_O_B], x, r, 0, ti);
  eellm_insert_norm_fwd(r, t[EELLM_LN2_W], t[EELLM_LN2_B], ln2, st2, c->norm, 1e-5f, ti);
  eellm_insert_linear_fwd(ln2, t[EELLM_FC_W], t[EELLM_FC_B], NULL, h, 0, ti);
  eellm_insert_activation_fwd(h, a, c->act, ti);
  eellm_insert_linear_fwd(a, t[EELLM_PROJ_W], t[EELLM_PROJ_B], r, y, 0, ti);
}

/* The layer's steps (cpu/layer.c) run directly with every product's two parts in
 * reverse order, as a helper that claims the second part first leaves them: the
 * same bits as the layer_cached task (r_want, y_want, cache_want; padded as that
 * task's) from the same start (x with row stride ld, cache_start). */
static void check_steps_reversed(const struct layer_case *c,
                                 const struct eellm_cpu_layer_weights *w, const float *x, size_t ld,
                                 const int32_t *positions, const int32_t *slots,
                                 const float *cache_start, const struct eellm_layer_kind *kind,
                                 const float *r_want, const float *y_want,
                                 const float *cache_want) {
  enum { S = LAYER_SLOTS, C = LAYER_CAPACITY, N = LAYER_ROWS };
  size_t D = LAYER_DIM, att = c->H * c->hd, fc = c->act == EELLM_SWIGLU ? 2 * c->ffn : c->ffn;
  struct eellm_cpu_layer_shape shape = {D, c->hd, fc, c->ffn, C, S, *kind};
  float *cache = tu_alloc(S * C * 2 * att), *r = tu_alloc(N * ld), *y = tu_alloc(N * ld);
  memcpy(cache, cache_start, S * C * 2 * att * sizeof *cache);
  float *work = tu_alloc(eellm_cpu_layer_cached_work_bytes(N, &shape) / sizeof(float) + 1);
  struct eellm_cpu_layer_call call = {N,     &shape,  w, x,  ld, positions, slots,
                                      cache, 2 * att, r, ld, y,  ld,        work};
  for (unsigned step = 0; step < EELLM_LAYER_STEPS; step++)
    for (unsigned part = eellm_cpu_layer_step_parts(step); part-- > 0;)
      eellm_cpu_layer_step(&call, step, part);
  int same = memcmp(cache, cache_want, S * C * 2 * att * sizeof *cache) == 0;
  for (size_t n = 0; n < N; n++)
    same &= memcmp(r + n * ld, r_want + n * ld, D * sizeof *r) == 0 &&
            memcmp(y + n * ld, y_want + n * ld, D * sizeof *y) == 0;
  char what[128];
  snprintf(what, sizeof what, "layer_cached %s: steps, parts reversed, the same bits", c->name);
  tu_ok(same, what);
}

/* layer_cached on three rows (two of slot 1 at positions 2, 3; one of slot 0 at
 * position 5, the cache holding earlier keys) against the layer's separate
 * tasks on a copy of the cache: the same r, y and cache. */
static void test_layer_cached(const struct eellm_task_info *ti, void *ctx) {
  const struct layer_case *c = ctx;
  enum { S = LAYER_SLOTS, C = LAYER_CAPACITY, N = LAYER_ROWS };
  size_t D = LAYER_DIM, att = c->H * c->hd, pad = 3;
  float theta = 1000.0f;
  int32_t slots[N] = {1, 1, 0}, positions[N] = {2, 3, 5};
  starpu_data_handle_t t[EELLM_LAYER_TENSORS];
  layer_tensors(c, D, t);
  float *x = padded(N, D, pad, -1, 1), *cache_tasks = random_floats(S * C * 2 * att, -1, 1);
  float *cache_fused = tu_alloc(S * C * 2 * att), *cache_start = tu_alloc(S * C * 2 * att);
  memcpy(cache_fused, cache_tasks, S * C * 2 * att * sizeof *cache_fused);
  memcpy(cache_start, cache_tasks, S * C * 2 * att * sizeof *cache_start);
  float *r_tasks = tu_alloc(N * D), *y_tasks = tu_alloc(N * D);
  float *r_fused = padded(N, D, pad, 0, 1), *y_fused = padded(N, D, pad, 0, 1);
  starpu_data_handle_t h_x = tu_matrix_ld(x, N, D, D + pad);
  starpu_data_handle_t h_pos = tu_vector_i32(positions, N), h_slots = tu_vector_i32(slots, N);
  layer_by_tasks(c, N, h_x, t, h_pos, h_slots, tu_matrix(cache_tasks, S * C, 2 * att), C, theta,
                 tu_matrix(r_tasks, N, D), tu_matrix(y_tasks, N, D), ti);
  struct eellm_layer_kind kind = {(unsigned)c->H, c->norm, 1e-5f, c->act, c->rope, theta};
  struct eellm_cpu_layer_weights w = {{0}, {0}}; /* for check_steps_reversed, after the sync */
  for (int i = 0; i < EELLM_LAYER_TENSORS; i++) {
    if (!t[i]) continue;
    w.t[i] = starpu_data_handle_to_pointer(t[i], STARPU_MAIN_RAM);
    if (starpu_data_get_interface_id(t[i]) == STARPU_MATRIX_INTERFACE_ID)
      w.ld[i] = starpu_matrix_get_local_ld(t[i]);
  }
  eellm_insert_layer_cached(h_x, t, h_pos, h_slots, tu_matrix(cache_fused, S * C, 2 * att),
                            tu_matrix_ld(r_fused, N, D, D + pad),
                            tu_matrix_ld(y_fused, N, D, D + pad), C, &kind, ti);
  tu_sync_all();
  char what[128];
  snprintf(what, sizeof what, "layer_cached %s: r", c->name);
  check(what, unpad(r_fused, N, D, D + pad), tu_to_f64(r_tasks, N * D), N * D, RTOL, ATOL);
  snprintf(what, sizeof what, "layer_cached %s: y", c->name);
  check(what, unpad(y_fused, N, D, D + pad), tu_to_f64(y_tasks, N * D), N * D, RTOL, ATOL);
  snprintf(what, sizeof what, "layer_cached %s: cache", c->name);
  check(what, cache_fused, tu_to_f64(cache_tasks, S * C * 2 * att), S * C * 2 * att, RTOL, ATOL);
  tu_ok(padding_is_nan(r_fused, N, D, D + pad) && padding_is_nan(y_fused, N, D, D + pad),
        "layer_cached leaves the padding alone");
  if (strcmp(tu_backend_name(), "cpu") == 0)
    check_steps_reversed(c, &w, x, D + pad, positions, slots, cache_start, &kind, r_fused, y_fused,
                         cache_fused);
}

/* ---- next token ------------------------------------------------------------ */

struct pick_case {
  const char *name;
  struct eellm_sampling s;
};

struct ref_choice {
  int token;
  double confidence, logprob;
};

static const double *sort_logits;

/* Larger logits first, ties by id. */
static int ref_desc(const void *a, const void *b) {
  int i = *(const int *)a, j = *(const int *)b;
  if (sort_logits[i] != sort_logits[j]) return sort_logits[i] > sort_logits[j] ? -1 : 1;
  return i - j;
}

/* The documented rule, in double: confidence of softmax(z / T_exit); the token
 * greedy, or the first (in id order, or by decreasing logit when top-k / top-p
 * restrict) whose cumulative renormalised probability exceeds u. */
static struct ref_choice ref_pick(const double *z, int V, const struct eellm_sampling *s,
                                  double u) {
  double p[64], max = z[0], sum = 0, entropy = 0;
  int best = 0, order[64];
  for (int j = 1; j < V; j++)
    if (z[j] > z[best]) best = j;
  max = z[best];
  for (int j = 0; j < V; j++) sum += exp((z[j] - max) / s->exit_temperature);
  for (int j = 0; j < V; j++) {
    p[j] = exp((z[j] - max) / s->exit_temperature) / sum;
    entropy -= p[j] * log(p[j]);
  }
  struct ref_choice r = {best, s->entropy_rule ? 1 - entropy / log(V) : p[best], log(p[best])};
  if (s->temperature == 0) return r;
  double q[64], total = 0;
  for (int j = 0; j < V; j++) q[j] = exp((z[j] - max) / (s->exit_temperature * s->temperature));
  for (int j = 0; j < V; j++) order[j] = j;
  int kept = V, restricted = (s->top_k > 0 && (int)s->top_k < V) || (s->top_p > 0 && s->top_p < 1);
  if (restricted) {
    sort_logits = z;
    qsort(order, (size_t)V, sizeof *order, ref_desc);
  }
  if (s->top_k > 0 && (int)s->top_k < V) kept = (int)s->top_k;
  for (int j = 0; j < kept; j++) total += q[order[j]];
  if (s->top_p > 0 && s->top_p < 1) {
    double mass = 0;
    int nucleus = 0;
    while (nucleus < kept && mass / total < s->top_p) mass += q[order[nucleus++]];
    kept = nucleus;
    total = mass;
  }
  double acc = 0;
  r.token = order[kept - 1];
  for (int j = 0; j < kept; j++) {
    acc += q[order[j]] / total;
    if (acc > u) {
      r.token = order[j];
      break;
    }
  }
  r.logprob = log(q[r.token] / total);
  return r;
}

struct pick_run {
  const struct pick_case *c;
  size_t M;
  int V;
  int limited; /* rows with their own limits: odd rows top-p 0.5, every third its argmax banned */
};

static struct eellm_row_limit row_limit(const struct pick_run *run, size_t m, const float *z) {
  struct eellm_row_limit limit = {m % 2 ? 0.5f : run->c->s.top_p, -1};
  if (m % 3 == 0)
    for (int j = limit.banned = 0; j < run->V; j++)
      limit.banned = z[j] > z[limit.banned] ? j : limit.banned;
  return limit;
}

static void test_next_token(const struct eellm_task_info *ti, void *ctx) {
  const struct pick_run *run = ctx;
  const struct pick_case *c = run->c;
  size_t M = run->M;
  int V = run->V;
  float *logits = padded(M, (size_t)V, 2, -3, 3), *uniforms = random_floats(M, 0, 1);
  struct eellm_token_choice *choices = calloc(M, sizeof *choices);
  if (!choices) exit(1);
  starpu_data_handle_t h_choices;
  starpu_vector_data_register(&h_choices, STARPU_MAIN_RAM, (uintptr_t)choices, M, sizeof *choices);
  int sampling = c->s.temperature > 0;
  struct eellm_row_limit *limits = calloc(M, sizeof *limits);
  if (!limits) exit(1);
  for (size_t m = 0; m < M; m++) limits[m] = row_limit(run, m, logits + m * ((size_t)V + 2));
  starpu_data_handle_t h_limits = NULL;
  if (run->limited)
    starpu_vector_data_register(&h_limits, STARPU_MAIN_RAM, (uintptr_t)limits, M, sizeof *limits);
  eellm_insert_next_token(tu_matrix_ld(logits, M, (size_t)V, (size_t)V + 2),
                          sampling ? tu_vector(uniforms, M) : NULL, h_limits, h_choices, &c->s, ti);
  if (h_limits) starpu_data_unregister(h_limits);
  starpu_data_unregister(h_choices);
  tu_sync_all();

  int tokens_equal = 1;
  float *got = tu_alloc(2 * M), *got_raw = tu_alloc(2 * M);
  double *want = tu_alloc_f64(2 * M), *want_raw = tu_alloc_f64(2 * M);
  for (size_t m = 0; m < M; m++) {
    double z[64];
    for (int j = 0; j < V; j++) z[j] = logits[m * ((size_t)V + 2) + (size_t)j];
    struct eellm_sampling row_s = c->s;
    if (run->limited) {
      row_s.top_p = limits[m].top_p;
      if (limits[m].banned >= 0) z[limits[m].banned] = -1e10;
    }
    struct ref_choice r = ref_pick(z, V, &row_s, uniforms[m]);
    tokens_equal &= choices[m].token == r.token;
    got[2 * m] = choices[m].confidence;
    got[2 * m + 1] = choices[m].logprob;
    want[2 * m] = r.confidence;
    want[2 * m + 1] = r.logprob;
    /* Of softmax(z) as it is, whatever the exit temperature and sampling. */
    double max = z[0], sum = 0;
    for (int j = 1; j < V; j++) max = z[j] > max ? z[j] : max;
    for (int j = 0; j < V; j++) sum += exp(z[j] - max);
    got_raw[2 * m] = choices[m].raw_logprob;
    got_raw[2 * m + 1] = choices[m].raw_maxprob;
    want_raw[2 * m] = z[r.token] - max - log(sum);
    want_raw[2 * m + 1] = 1 / sum;
  }
  char what[160];
  snprintf(what, sizeof what, "%s: tokens", c->name);
  tu_ok(tokens_equal, what);
  snprintf(what, sizeof what, "%s: confidence, logprob", c->name);
  check(what, got, want, 2 * M, RTOL, ATOL);
  snprintf(what, sizeof what, "%s: raw logprob, raw max probability", c->name);
  check(what, got_raw, want_raw, 2 * M, RTOL, ATOL);
  free(choices);
  free(limits);
}

/* Greedy choices on rows longer than the CPU kernel's search blocks: the first of
 * two equal largest logits, one at the start, and no token (-1) from a row with
 * an infinity or a NaN. CPU only: the search blocks are the CPU kernel's. */
static void test_greedy_long_rows(void) {
  enum { M = 4, V = 300 };
  static float logits[M * V];
  for (size_t i = 0; i < M * V; i++) logits[i] = (float)tu_uniform(-3, 3);
  logits[0 * V + 250] = logits[0 * V + 290] = 5;
  logits[1 * V + 0] = 5;
  logits[2 * V + 100] = INFINITY;
  logits[3 * V + 299] = NAN;
  struct eellm_token_choice choices[M];
  starpu_data_handle_t h_choices;
  starpu_vector_data_register(&h_choices, STARPU_MAIN_RAM, (uintptr_t)choices, M, sizeof *choices);
  struct eellm_sampling greedy = {1, 0, 0, 0, 1};
  struct eellm_task_info cpu = eellm_task_default;
  cpu.where = STARPU_CPU;
  eellm_insert_next_token(tu_matrix(logits, M, V), NULL, NULL, h_choices, &greedy, &cpu);
  starpu_data_unregister(h_choices);
  tu_sync_all();
  tu_ok(choices[0].token == 250 && choices[1].token == 0,
        "greedy V=300: the first largest logit, past a search block and at 0");
  tu_ok(choices[2].token == -1 && choices[3].token == -1,
        "greedy V=300: no token from a row with an infinity or a NaN");
}

/* Many draws from one row: the sampled frequencies follow the restricted distribution. */
static void test_sampling_frequencies(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  enum { V = 6, DRAWS = 4000 };
  static float logits[DRAWS * V], uniforms[DRAWS];
  static const float row[V] = {1.0f, 2.0f, 0.5f, 1.8f, -1.0f, 1.2f};
  for (size_t m = 0; m < DRAWS; m++) {
    memcpy(logits + m * V, row, sizeof row);
    uniforms[m] = (float)tu_uniform(0, 1);
  }
  struct eellm_sampling s = {.exit_temperature = 1, .temperature = 1, .top_k = 3, .top_p = 1};
  struct eellm_token_choice *choices = calloc(DRAWS, sizeof *choices);
  if (!choices) exit(1);
  starpu_data_handle_t h_choices;
  starpu_vector_data_register(&h_choices, STARPU_MAIN_RAM, (uintptr_t)choices, DRAWS,
                              sizeof *choices);
  eellm_insert_next_token(tu_matrix(logits, DRAWS, V), tu_vector(uniforms, DRAWS), NULL, h_choices,
                          &s, ti);
  starpu_data_unregister(h_choices);
  tu_sync_all();
  double count[V] = {0}, e1 = exp(2.0), e3 = exp(1.8), e5 = exp(1.2), total = e1 + e3 + e5;
  for (size_t m = 0; m < DRAWS; m++) count[choices[m].token] += 1.0 / DRAWS;
  double want[V] = {0, e1 / total, 0, e3 / total, 0, e5 / total};
  float freq[V];
  for (int j = 0; j < V; j++) freq[j] = (float)count[j];
  /* 4000 draws: a standard deviation of at most 0.008 per frequency. */
  check("top-k 3 sampling frequencies (4000 draws)", freq, want, V, 0, 0.03);
  free(choices);
}

int main(void) {
  tu_start();
  tu_seed(11);
  static const char *const embed_op[] = {"embed_at", NULL}, *const gather_op[] = {"gather_rows", NULL};
  static const char *const set_ops[] = {"vector_set", "gather_rows", NULL};
  static const char *const cached_op[] = {"attention_cached", NULL};
  static const char *const both_ops[] = {"attention_fwd", "attention_cached", NULL};
  static const char *const pick_op[] = {"next_token", NULL};
  static const char *const sample_op[] = {"next_token_sampled", NULL};
  static int on = 1;
  tu_for_each_backend("embed_at with wpe", embed_op, test_embed_at, &on);
  tu_for_each_backend("embed_at without wpe", embed_op, test_embed_at, NULL);
  tu_for_each_backend("gather_rows", gather_op, test_gather_rows, NULL);
  tu_for_each_backend("vector_set ordering", set_ops, test_vector_set, NULL);
  static const struct cache_case cache_cases[] = {{2, 12, 0}, {2, 12, 1}, {1, 8, 1}, {3, 18, 0}};
  for (size_t i = 0; i < sizeof cache_cases / sizeof cache_cases[0]; i++) {
    char what[64];
    snprintf(what, sizeof what, "attention_cached H=%zu D=%zu rope %d", cache_cases[i].H,
             cache_cases[i].D, cache_cases[i].rope);
    tu_for_each_backend(what, cached_op, test_attention_cached, (void *)&cache_cases[i]);
  }
  static const struct pieces_case pieces[] = {
      {"cached, piece by piece == training attention", 0, 7, 2, 12, 8, 4},
      {"cached, piece by piece == training attention (RoPE)", 1, 7, 2, 12, 8, 4},
      {"cached, piece by piece == training attention (tiled prefill, RoPE)", 1, 40, 2, 32, 48, 20},
  };
  for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++)
    tu_for_each_backend(pieces[i].name, both_ops, test_cached_matches_training, (void *)&pieces[i]);

  static const char *const layer_op[] = {"layer_cached", NULL};
  static const struct layer_case layer_cases[] = {
      {"layernorm, GELU, biases", 2, 6, 24, EELLM_LAYERNORM, EELLM_GELU, 0, 1},
      {"rmsnorm, SwiGLU, RoPE, no biases", 4, 4, 20, EELLM_RMSNORM, EELLM_SWIGLU, 1, 0},
  };
  for (size_t i = 0; i < sizeof layer_cases / sizeof layer_cases[0]; i++)
    tu_for_each_backend(layer_cases[i].name, layer_op, test_layer_cached, (void *)&layer_cases[i]);

  static const struct pick_case pick_cases[] = {
      {"greedy, maxprob, exit temperature 0.7", {0.7f, 0, 0, 0, 1}},
      {"greedy, entropy rule", {1, 1, 0, 0, 1}},
      {"sampling T=0.8", {1, 0, 0.8f, 0, 1}},
      {"sampling top-k 5, exit temperature 1.5", {1.5f, 0, 1, 5, 1}},
      {"sampling top-p 0.6", {1, 0, 1.3f, 0, 0.6f}},
      {"sampling top-k 10 top-p 0.9, entropy", {1, 1, 0.7f, 10, 0.9f}},
  };
  for (size_t i = 0; i < sizeof pick_cases / sizeof pick_cases[0]; i++) {
    struct pick_run runs[3] = {
        {&pick_cases[i], 5, 37, 0}, {&pick_cases[i], 1, 2, 0}, {&pick_cases[i], 6, 37, 1}};
    for (int r = 0; r < 3; r++) {
      char what[112];
      snprintf(what, sizeof what, "%s M=%zu V=%d%s", pick_cases[i].name, runs[r].M, runs[r].V,
               runs[r].limited ? ", row limits" : "");
      int sampled = pick_cases[i].s.temperature > 0 || runs[r].limited;
      tu_for_each_backend(what, sampled ? sample_op : pick_op, test_next_token, &runs[r]);
    }
  }
  tu_for_each_backend("sampling frequencies", sample_op, test_sampling_frequencies, NULL);
  test_greedy_long_rows();
  return tu_finish();
}
