/* Causal multi-head self-attention on packed qkv, with optional RoPE (Hugging
 * Face Llama / GPT-NeoX "rotate half" convention): the training forward and
 * backward over whole sequences, and generation's attention of new rows over a
 * key/value cache at absolute positions. Both forwards share one RoPE and one
 * tiled causal attention routine (eellm_cpu_attend). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "vector.h"

/* ---- RoPE ----------------------------------------------------------------- */

void eellm_cpu_rope_table(float *cos_t, float *sin_t, size_t pos0, size_t n_pos, size_t hd,
                          float theta) {
  size_t half = hd / 2;
  for (size_t i = 0; i < half; i++) {
    double freq = pow((double)theta, -2.0 * (double)i / (double)hd);
    for (size_t p = 0; p < n_pos; p++) {
      cos_t[p * half + i] = (float)cos((double)(pos0 + p) * freq);
      sin_t[p * half + i] = (float)sin((double)(pos0 + p) * freq);
    }
  }
}

/* (x_i, x_{i+h}) -> (x_i cos - x_{i+h} sin, x_{i+h} cos + x_i sin), h = hd/2. */
void eellm_cpu_rope_rotate(size_t n, size_t hd, const float *x, size_t ld_x, float *y,
                           size_t ld_y, const float *cos_t, const float *sin_t, size_t ld_cs) {
  size_t half = hd / 2;
  for (size_t r = 0; r < n; r++) {
    const float *xr = x + r * ld_x, *c = cos_t + r * ld_cs, *s = sin_t + r * ld_cs;
    float *yr = y + r * ld_y;
    for (size_t i = 0; i < half; i++) {
      yr[i] = xr[i] * c[i] - xr[i + half] * s[i];
      yr[i + half] = xr[i + half] * c[i] + xr[i] * s[i];
    }
  }
}

void eellm_cpu_rope_unrotate(size_t n, size_t hd, const float *dy, size_t ld_dy, float *dx,
                             size_t ld_dx, int accumulate, const float *cos_t, const float *sin_t,
                             size_t ld_cs) {
  size_t half = hd / 2;
  for (size_t r = 0; r < n; r++) {
    const float *g = dy + r * ld_dy, *c = cos_t + r * ld_cs, *s = sin_t + r * ld_cs;
    float *dr = dx + r * ld_dx;
    for (size_t i = 0; i < half; i++) {
      float lo = g[i] * c[i] + g[i + half] * s[i];
      float hi = g[i + half] * c[i] - g[i] * s[i];
      dr[i] = accumulate ? dr[i] + lo : lo;
      dr[i + half] = accumulate ? dr[i + half] + hi : hi;
    }
  }
}

/* ---- one head's causal attention, tiled ----------------------------------- */

/* Query rows go QUERY_BLOCK at a time, and each block meets the keys it sees, KEY_CHUNK at a
 * time (flash attention's tiling): no [T, T] matrix, the keys past a block's last row are
 * never touched (the causal half skipped, but for the diagonal), and the work stays
 * QUERY_BLOCK x KEY_CHUNK floats whatever T. Within a chunk the products are sgemm calls. */
enum { QUERY_BLOCK = 64, KEY_CHUNK = 256 };

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* Keys of chunk [c0, c0 + nk) that a row seeing keys 0 .. seen - 1 sees. */
static size_t seen_in_chunk(size_t seen, size_t c0, size_t nk) {
  return seen > c0 ? min_size(seen - c0, nk) : 0;
}

/* s [n] -> exp(s - shift) for the first `valid` entries, 0 after; returns the sum of the
 * first `valid`. */
EELLM_VECTORIZED static float exp_shifted(float *s, size_t n, size_t valid, float shift) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t j = 0; j < valid; j++) {
    s[j] = eellm_vexpf(s[j] - shift);
    sum += s[j];
  }
  for (size_t j = valid; j < n; j++) s[j] = 0;
  return sum;
}

EELLM_VECTORIZED static float max_of(const float *s, size_t n, float start) {
  return eellm_max(s, n, start);
}

EELLM_VECTORIZED static void scale_row(float *x, size_t n, float by) {
  for (size_t i = 0; i < n; i++) x[i] *= by;
}

/* A block of rows <= QUERY_BLOCK, row r seeing keys 0 .. first_seen + r - 1 (at most
 * `keys`): the online softmax keeps each row's running max and sum over the chunks and
 * rescales the output rows, which hold the unnormalised sum of p v until the end. */
static void attend_block(size_t rows, size_t keys, size_t first_seen, size_t hd, const float *q,
                         size_t ld_q, const float *k, size_t ld_k, const float *v, size_t ld_v,
                         float *out, size_t ld_out, float *scores, float *lse, size_t ld_lse) {
  float scale = 1.0f / sqrtf((float)hd), max[QUERY_BLOCK];
  double sum[QUERY_BLOCK];
  keys = min_size(keys, first_seen + rows - 1);
  for (size_t r = 0; r < rows; r++) max[r] = -INFINITY, sum[r] = 0;
  for (size_t c0 = 0; c0 < keys; c0 += KEY_CHUNK) {
    size_t nk = min_size(KEY_CHUNK, keys - c0);
    eellm_cpu_matmul(rows, nk, hd, 1, scale, q, ld_q, k + c0 * ld_k, ld_k, 0.0f, scores, nk);
    for (size_t r = 0; r < rows; r++) {
      float *s = scores + r * nk;
      size_t valid = seen_in_chunk(first_seen + r, c0, nk);
      float row_max = max_of(s, valid, max[r]);
      float part = exp_shifted(s, nk, valid, row_max);
      if (c0 > 0 && valid > 0) {
        float alpha = expf(max[r] - row_max);
        sum[r] *= alpha;
        scale_row(out + r * ld_out, hd, alpha);
      }
      if (valid > 0) max[r] = row_max;
      sum[r] += part;
    }
    eellm_cpu_matmul(rows, hd, nk, 0, 1.0f, scores, nk, v + c0 * ld_v, ld_v, c0 > 0 ? 1.0f : 0.0f,
                     out, ld_out);
  }
  for (size_t r = 0; r < rows; r++) {
    scale_row(out + r * ld_out, hd, (float)(1.0 / sum[r]));
    if (lse) lse[r * ld_lse] = (float)(max[r] + log(sum[r]));
  }
}

void eellm_cpu_attend(size_t rows, size_t keys, size_t first_seen, size_t hd, const float *q,
                      size_t ld_q, const float *k, size_t ld_k, const float *v, size_t ld_v,
                      float *out, size_t ld_out, float *scores, float *lse, size_t ld_lse) {
  for (size_t r0 = 0; r0 < rows; r0 += QUERY_BLOCK)
    attend_block(min_size(QUERY_BLOCK, rows - r0), keys, first_seen + r0, hd, q + r0 * ld_q, ld_q,
                 k, ld_k, v, ld_v, out + r0 * ld_out, ld_out, scores,
                 lse ? lse + r0 * ld_lse : NULL, ld_lse);
}

size_t eellm_cpu_attend_work_floats(size_t rows, size_t keys) {
  return min_size(rows, QUERY_BLOCK) * min_size(keys, KEY_CHUNK);
}

/* ---- training attention: whole sequences ---------------------------------- */

/* Work (floats): probabilities (forward: scores) and, in backward, their gradients,
 * eellm_cpu_attend_work_floats(T, T) each; with RoPE, cos/sin tables [T, hd/2] each plus
 * rotated q, k [T, hd] each and, in backward, their gradients [T, hd] each. */
struct attention_work {
  float *probs, *dprobs, *cos, *sin, *q_rot, *k_rot, *dq_rot, *dk_rot;
};

static size_t work_floats(size_t T, size_t hd, int rope, int backward) {
  size_t tile = eellm_cpu_attend_work_floats(T, T), th = T * hd;
  size_t n = tile * (backward ? 2 : 1);
  if (rope) n += th /* cos, sin */ + 2 * th /* q_rot, k_rot */ + (backward ? 2 * th : 0);
  return n;
}

size_t eellm_cpu_attention_work_bytes(size_t T, size_t hd, int rope, int backward) {
  return work_floats(T, hd, rope, backward) * sizeof(float);
}

static struct attention_work carve(float *base, size_t T, size_t hd, int rope, int backward) {
  size_t tile = eellm_cpu_attend_work_floats(T, T), th = T * hd;
  struct attention_work w = {0};
  w.probs = base;
  float *next = w.probs + tile;
  if (backward) {
    w.dprobs = next;
    next += tile;
  }
  if (rope) {
    w.cos = next;
    w.sin = w.cos + th / 2;
    w.q_rot = w.sin + th / 2;
    w.k_rot = w.q_rot + th;
    if (backward) {
      w.dq_rot = w.k_rot + th;
      w.dk_rot = w.dq_rot + th;
    }
  }
  return w;
}

/* Where one (sequence, head) block's q and k are read from: the qkv rows
 * directly, or the rotated copies in work. */
struct qk_view {
  const float *q, *k;
  size_t ld;
};

static struct qk_view load_qk(const float *q_raw, const float *k_raw, size_t ld_qkv, size_t T,
                              size_t hd, const struct attention_work *w) {
  if (!w->cos) return (struct qk_view){q_raw, k_raw, ld_qkv};
  eellm_cpu_rope_rotate(T, hd, q_raw, ld_qkv, w->q_rot, hd, w->cos, w->sin, hd / 2);
  eellm_cpu_rope_rotate(T, hd, k_raw, ld_qkv, w->k_rot, hd, w->cos, w->sin, hd / 2);
  return (struct qk_view){w->q_rot, w->k_rot, hd};
}

void eellm_cpu_attention_fwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                             float rope_theta, const float *qkv, size_t ld_qkv, float *out,
                             size_t ld_out, float *lse, size_t ld_lse, void *work) {
  size_t D = H * hd;
  struct attention_work w = carve(work, T, hd, rope, 0);
  if (rope) eellm_cpu_rope_table(w.cos, w.sin, 0, T, hd, rope_theta);
  for (size_t b = 0; b < n_seq; b++) {
    size_t row0 = b * T;
    for (size_t h = 0; h < H; h++) {
      const float *q = qkv + row0 * ld_qkv + h * hd;
      struct qk_view qk = load_qk(q, q + D, ld_qkv, T, hd, &w);
      eellm_cpu_attend(T, T, 1, hd, qk.q, qk.ld, qk.k, qk.ld, q + 2 * D, ld_qkv,
                       out + row0 * ld_out + h * hd, ld_out, w.probs, lse + row0 * ld_lse + h,
                       ld_lse);
    }
  }
}

/* One (sequence, head): q, k (maybe rotated), v and dO at row 0, the gradients to add to
 * (dq, dk: of the rotated q and k with RoPE), the saved lse, and the tiles in work. */
struct head_bwd {
  size_t hd;
  const float *q, *k, *v, *dout, *lse;
  size_t ld_qk, ld_v, ld_dout, ld_lse;
  float *dq, *dk, *dv;
  size_t ld_dqk, ld_dv;
  float *p, *dp;
};

/* For query rows [r0, r0 + rows) and keys [c0, c0 + nk): p = softmax probabilities from
 * the saved lse (0 where masked), dp = dO v^T. */
static void chunk_probs(const struct head_bwd *g, size_t r0, size_t rows, size_t c0, size_t nk) {
  float scale = 1.0f / sqrtf((float)g->hd);
  eellm_cpu_matmul(rows, nk, g->hd, 1, scale, g->q + r0 * g->ld_qk, g->ld_qk, g->k + c0 * g->ld_qk,
                   g->ld_qk, 0.0f, g->p, nk);
  eellm_cpu_matmul(rows, nk, g->hd, 1, 1.0f, g->dout + r0 * g->ld_dout, g->ld_dout,
                   g->v + c0 * g->ld_v, g->ld_v, 0.0f, g->dp, nk);
  for (size_t r = 0; r < rows; r++)
    exp_shifted(g->p + r * nk, nk, seen_in_chunk(r0 + r + 1, c0, nk), g->lse[(r0 + r) * g->ld_lse]);
}

/* dot[r] += sum_j p[r, j] dp[r, j]: the softmax backward's row terms. */
EELLM_VECTORIZED static void add_row_dots(const struct head_bwd *g, size_t rows, size_t nk,
                                          double *dot) {
  for (size_t r = 0; r < rows; r++) {
    const float *p = g->p + r * nk, *dp = g->dp + r * nk;
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (size_t j = 0; j < nk; j++) part += p[j] * dp[j];
    dot[r] += part;
  }
}

/* dp [rows, nk] -> dS = p (dp - dot), row by row. */
EELLM_VECTORIZED static void softmax_grads(const float *p, float *dp, size_t rows, size_t nk,
                                           const double *dot) {
  for (size_t r = 0; r < rows; r++) {
    const float *p_row = p + r * nk;
    float *ds = dp + r * nk, d = (float)dot[r];
    for (size_t j = 0; j < nk; j++) ds[j] = p_row[j] * (ds[j] - d);
  }
}

/* From p and dp of a chunk: dS in dp, then dq += scale dS k, dk += scale dS^T q and
 * dv += p^T dO. */
static void chunk_grads(const struct head_bwd *g, size_t r0, size_t rows, size_t c0, size_t nk,
                        const double *dot) {
  float scale = 1.0f / sqrtf((float)g->hd);
  softmax_grads(g->p, g->dp, rows, nk, dot);
  int hd = (int)g->hd;
  eellm_cpu_matmul(rows, g->hd, nk, 0, scale, g->dp, nk, g->k + c0 * g->ld_qk, g->ld_qk, 1.0f,
                   g->dq + r0 * g->ld_dqk, g->ld_dqk);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, hd, (int)rows, scale, g->dp,
              (int)nk, g->q + r0 * g->ld_qk, (int)g->ld_qk, 1.0f, g->dk + c0 * g->ld_dqk,
              (int)g->ld_dqk);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, hd, (int)rows, 1.0f, g->p, (int)nk,
              g->dout + r0 * g->ld_dout, (int)g->ld_dout, 1.0f, g->dv + c0 * g->ld_dv,
              (int)g->ld_dv);
}

/* Query rows [r0, r0 + rows) of a sequence (row t sees keys 0 .. t). The row terms need
 * every chunk's p and dp before any gradient: with several chunks they are computed twice. */
static void head_block_bwd(const struct head_bwd *g, size_t r0, size_t rows) {
  size_t keys = r0 + rows;
  double dot[QUERY_BLOCK] = {0};
  int one_chunk = keys <= KEY_CHUNK;
  if (!one_chunk)
    for (size_t c0 = 0; c0 < keys; c0 += KEY_CHUNK) {
      size_t nk = min_size(KEY_CHUNK, keys - c0);
      chunk_probs(g, r0, rows, c0, nk);
      add_row_dots(g, rows, nk, dot);
    }
  for (size_t c0 = 0; c0 < keys; c0 += KEY_CHUNK) {
    size_t nk = min_size(KEY_CHUNK, keys - c0);
    chunk_probs(g, r0, rows, c0, nk);
    if (one_chunk) add_row_dots(g, rows, nk, dot);
    chunk_grads(g, r0, rows, c0, nk, dot);
  }
}

/* x [T, hd] (ld) = 0. */
static void zero_rows(float *x, size_t T, size_t hd, size_t ld) {
  for (size_t t = 0; t < T; t++) memset(x + t * ld, 0, hd * sizeof *x);
}

void eellm_cpu_attention_bwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                             float rope_theta, int beta_dx, const float *qkv, size_t ld_qkv,
                             const float *lse, size_t ld_lse, const float *dout, size_t ld_dout,
                             float *dqkv, size_t ld_dqkv, void *work) {
  size_t D = H * hd;
  struct attention_work w = carve(work, T, hd, rope, 1);
  if (rope) eellm_cpu_rope_table(w.cos, w.sin, 0, T, hd, rope_theta);
  for (size_t b = 0; b < n_seq; b++) {
    size_t row0 = b * T;
    for (size_t h = 0; h < H; h++) {
      const float *q = qkv + row0 * ld_qkv + h * hd;
      float *dq = dqkv + row0 * ld_dqkv + h * hd;
      struct qk_view qk = load_qk(q, q + D, ld_qkv, T, hd, &w);
      /* The products add up over blocks: into zeroed rotated gradients with RoPE, else
       * into dqkv itself (zeroed first unless beta_dx). */
      struct head_bwd g = {.hd = hd,
                           .q = qk.q,
                           .k = qk.k,
                           .v = q + 2 * D,
                           .dout = dout + row0 * ld_dout + h * hd,
                           .lse = lse + row0 * ld_lse + h,
                           .ld_qk = qk.ld,
                           .ld_v = ld_qkv,
                           .ld_dout = ld_dout,
                           .ld_lse = ld_lse,
                           .dq = rope ? w.dq_rot : dq,
                           .dk = rope ? w.dk_rot : dq + D,
                           .dv = dq + 2 * D,
                           .ld_dqk = rope ? hd : ld_dqkv,
                           .ld_dv = ld_dqkv,
                           .p = w.probs,
                           .dp = w.dprobs};
      if (rope) {
        memset(w.dq_rot, 0, 2 * T * hd * sizeof(float)); /* dq_rot, dk_rot */
      } else if (!beta_dx) {
        zero_rows(dq, T, hd, ld_dqkv);
        zero_rows(dq + D, T, hd, ld_dqkv);
      }
      if (!beta_dx) zero_rows(dq + 2 * D, T, hd, ld_dqkv);
      for (size_t r0 = 0; r0 < T; r0 += QUERY_BLOCK)
        head_block_bwd(&g, r0, min_size(QUERY_BLOCK, T - r0));
      if (rope) {
        eellm_cpu_rope_unrotate(T, hd, w.dq_rot, hd, dq, ld_dqkv, beta_dx, w.cos, w.sin, hd / 2);
        eellm_cpu_rope_unrotate(T, hd, w.dk_rot, hd, dq + D, ld_dqkv, beta_dx, w.cos, w.sin,
                                hd / 2);
      }
    }
  }
}

/* ---- attention over a key/value cache ------------------------------------- */

/* Work (floats): cos, sin [n, hd/2] each, rotated queries [n, hd], scores
 * [n, capacity]: a block has at most n rows and, its positions being below
 * capacity, at most capacity keys. */
size_t eellm_cpu_attention_cached_work_bytes(size_t n, size_t hd, size_t capacity) {
  return (n * hd + n * hd + n * capacity) * sizeof(float);
}

/* Rows from r on that share r's slot at consecutive positions. */
static size_t block_len(const int32_t *positions, const int32_t *slots, size_t r, size_t n) {
  size_t end = r + 1;
  while (end < n && slots[end] == slots[r] && positions[end] == positions[end - 1] + 1) end++;
  return end - r;
}

void eellm_cpu_attention_cached(size_t n, size_t H, size_t hd, size_t capacity, size_t n_slots,
                                int rope, float rope_theta, const float *qkv, size_t ld_qkv,
                                const int32_t *positions, const int32_t *slots, float *cache,
                                size_t ld_cache, float *out, size_t ld_out, void *work) {
  size_t D = H * hd;
  float *cos_t = work, *sin_t = cos_t + n * hd / 2, *q_rot = sin_t + n * hd / 2;
  float *scores = q_rot + n * hd;

  /* Every row's key (rotated at its position) and value into its cache row. */
  for (size_t r = 0; r < n; r++) {
    eellm_cpu_check_index("attention_cached: position", positions[r], capacity);
    eellm_cpu_check_index("attention_cached: slot", slots[r], n_slots);
    const float *k = qkv + r * ld_qkv + D;
    float *dst = cache + ((size_t)slots[r] * capacity + (size_t)positions[r]) * ld_cache;
    if (rope) {
      eellm_cpu_rope_table(cos_t, sin_t, (size_t)positions[r], 1, hd, rope_theta);
      eellm_cpu_rope_rotate(H, hd, k, hd, dst, hd, cos_t, sin_t, 0);
    } else {
      memcpy(dst, k, D * sizeof *dst);
    }
    memcpy(dst + D, k + D, D * sizeof *dst);
  }

  /* Blocks of rows of one slot at consecutive positions p0 ..: per head, the
   * block attends to the slot's keys 0 .. p0 + nr - 1, row i seeing p0 + i + 1. */
  for (size_t r = 0, nr; r < n; r += nr) {
    nr = block_len(positions, slots, r, n);
    size_t p0 = (size_t)positions[r];
    const float *slot_cache = cache + (size_t)slots[r] * capacity * ld_cache;
    if (rope) eellm_cpu_rope_table(cos_t, sin_t, p0, nr, hd, rope_theta);
    for (size_t h = 0; h < H; h++) {
      const float *q = qkv + r * ld_qkv + h * hd;
      size_t ld_q = ld_qkv;
      if (rope) {
        eellm_cpu_rope_rotate(nr, hd, q, ld_qkv, q_rot, hd, cos_t, sin_t, hd / 2);
        q = q_rot;
        ld_q = hd;
      }
      eellm_cpu_attend(nr, p0 + nr, p0 + 1, hd, q, ld_q, slot_cache + h * hd, ld_cache,
                       slot_cache + D + h * hd, ld_cache, out + r * ld_out + h * hd, ld_out,
                       scores, NULL, 0);
    }
  }
}
