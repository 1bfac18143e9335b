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

/* ---- small products of the tiles ---------------------------------------- */

/* A tile's products are small (a strip of 16 query rows, a head of 32 to 128 columns):
 * OpenBLAS's sgemm spends most of such a call packing its operands, which these read in
 * place. c [m, n] = alpha a [m, k] b [k, n] (+ c where accumulate), n a multiple of 16:
 * a's element (i, p) at a[i * a_row + p * a_col] (a^T needs no copy), b and c row-major.
 * A register tile is up to TILE_ROWS rows of a broadcast against TILE_VECTORS vectors
 * of a row of b. */
enum { TILE_ROWS = 4, TILE_VECTORS = 4 };

static inline __attribute__((always_inline)) void product_tile(
    const size_t rows, const size_t vectors, size_t k, float alpha, const float *a, size_t a_row,
    size_t a_col, const float *b, size_t ld_b, int accumulate, float *c, size_t ld_c) {
  vf16 acc[TILE_ROWS][TILE_VECTORS];
  for (size_t r = 0; r < rows; r++)
    for (size_t v = 0; v < vectors; v++) acc[r][v] = (vf16){0};
  for (size_t p = 0; p < k; p++) {
    vf16 b_row[TILE_VECTORS];
    for (size_t v = 0; v < vectors; v++) b_row[v] = load16(b + p * ld_b + 16 * v);
    for (size_t r = 0; r < rows; r++) {
      vf16 a_rp = broadcast16(a[r * a_row + p * a_col]);
      for (size_t v = 0; v < vectors; v++) acc[r][v] += a_rp * b_row[v];
    }
  }
  for (size_t r = 0; r < rows; r++)
    for (size_t v = 0; v < vectors; v++) {
      float *c_rv = c + r * ld_c + 16 * v;
      store16(c_rv, accumulate ? load16(c_rv) + alpha * acc[r][v] : alpha * acc[r][v]);
    }
}

EELLM_VECTORIZED static void tile_product(size_t m, size_t n, size_t k, float alpha, const float *a,
                                          size_t a_row, size_t a_col, const float *b, size_t ld_b,
                                          int accumulate, float *c, size_t ld_c) {
  for (size_t j = 0; j < n; j += 16 * TILE_VECTORS) {
    size_t vectors = (n - j) / 16 < TILE_VECTORS ? (n - j) / 16 : TILE_VECTORS;
    for (size_t i = 0; i < m; i += TILE_ROWS) {
      size_t rows = m - i < TILE_ROWS ? m - i : TILE_ROWS;
      const float *a_i = a + i * a_row;
      float *c_ij = c + i * ld_c + j;
      switch (rows * 8 + vectors) { /* constant sizes, so that the tile's loops unroll */
#define TILE_CASE(R, V)                                                                   \
  case R * 8 + V:                                                                         \
    product_tile(R, V, k, alpha, a_i, a_row, a_col, b + j, ld_b, accumulate, c_ij, ld_c); \
    break;
        // clang-format off
        TILE_CASE(1, 1) TILE_CASE(1, 2) TILE_CASE(1, 3) TILE_CASE(1, 4)
        TILE_CASE(2, 1) TILE_CASE(2, 2) TILE_CASE(2, 3) TILE_CASE(2, 4)
        TILE_CASE(3, 1) TILE_CASE(3, 2) TILE_CASE(3, 3) TILE_CASE(3, 4)
        TILE_CASE(4, 1) TILE_CASE(4, 2) TILE_CASE(4, 3) TILE_CASE(4, 4)
        // clang-format on
#undef TILE_CASE
      }
    }
  }
}

/* ---- one head's causal attention, tiled ----------------------------------- */

/* Query rows go QUERY_BLOCK at a time, and each block meets the keys it sees, KEY_CHUNK at a
 * time (flash attention's tiling): no [T, T] matrix, and the work stays bounded whatever T.
 * Within a block, rows go in strips (16 rows with tile_product, 64 with sgemm, whose calls
 * need more rows to pay), and a strip's products stop at the last key its last row sees:
 * of the causal half only the strips' diagonal corners are computed. */
enum { QUERY_BLOCK = 128, KEY_CHUNK = 256, TILED_STRIP = 16, STRIP = 64 };

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }
static size_t whole_vectors(size_t n) { return (n + 15) / 16 * 16; }

/* Keys of chunk [c0, c0 + nk) that a row seeing keys 0 .. seen - 1 sees. */
static size_t seen_in_chunk(size_t seen, size_t c0, size_t nk) {
  return seen > c0 ? min_size(seen - c0, nk) : 0;
}

/* A few rows (a decoding step), heads not a whole number of vectors and CPUs without
 * AVX-512 multiply with eellm_cpu_matmul (its thin products read each key once, with no
 * transposed copy); other blocks with tile_product on keys and values transposed per
 * chunk. */
enum { FEW_ROWS = 8 };
static int tiled(size_t rows, size_t hd) {
  return rows > FEW_ROWS && hd % 16 == 0 && eellm_vf16_registers();
}
static size_t strip_rows(int tiles) { return tiles ? TILED_STRIP : STRIP; }

/* t [hd, whole_vectors(n)] = x [n, hd]^T (ld_x), the columns past n zero; 16 rows of x
 * at a time, so that each row of t gets whole vectors. */
EELLM_VECTORIZED static void transpose_padded(size_t n, size_t hd, const float *x, size_t ld_x,
                                              float *t) {
  size_t width = whole_vectors(n);
  for (size_t j0 = 0; j0 < width; j0 += 16)
    for (size_t d = 0; d < hd; d++)
      for (size_t j = j0; j < j0 + 16; j++) t[d * width + j] = j < n ? x[j * ld_x + d] : 0.0f;
}

/* s [rows, width] = alpha x [rows, hd] y^T for the first `seen` rows of y [.., hd] (ld_y),
 * width = whole_vectors(seen), the columns past seen zero: tiled, from y's chunk transposed
 * (y_t [hd, ld_t], zero past the chunk's keys); else from y itself. */
static void scores_product(int tiles, size_t rows, size_t seen, size_t width, size_t hd,
                           float alpha, const float *x, size_t ld_x, const float *y, size_t ld_y,
                           const float *y_t, size_t ld_t, float *s) {
  if (tiles) {
    tile_product(rows, width, hd, alpha, x, ld_x, 1, y_t, ld_t, 0, s, width);
    return;
  }
  eellm_cpu_matmul(rows, seen, hd, 1, alpha, x, ld_x, y, ld_y, 0.0f, s, width);
  for (size_t r = 0; r < rows; r++) memset(s + r * width + seen, 0, (width - seen) * sizeof *s);
}

/* c [rows, hd] (+)= alpha p [rows, seen] (ld_p) y [seen, hd]. */
static void values_product(int tiles, size_t rows, size_t seen, size_t hd, float alpha,
                           const float *p, size_t ld_p, const float *y, size_t ld_y, int accumulate,
                           float *c, size_t ld_c) {
  if (tiles)
    tile_product(rows, hd, seen, alpha, p, ld_p, 1, y, ld_y, accumulate, c, ld_c);
  else
    eellm_cpu_matmul(rows, hd, seen, 0, alpha, p, ld_p, y, ld_y, accumulate ? 1.0f : 0.0f, c, ld_c);
}

/* Rows of scores are whole vectors wide (width a multiple of 16) and their loops go 16
 * lanes at a time, each lane its own running max or sum, folded at the end: short rows
 * then cost no scalar remainder and no lane-by-lane reduction. */

/* The largest of start and s[0 .. valid - 1]. */
EELLM_VECTORIZED static float max_of(const float *s, size_t valid, float start) {
  float lane_max[16];
  for (size_t l = 0; l < 16; l++) lane_max[l] = start;
  size_t j0 = 0;
  for (; j0 + 16 <= valid; j0 += 16)
    for (size_t l = 0; l < 16; l++) lane_max[l] = s[j0 + l] > lane_max[l] ? s[j0 + l] : lane_max[l];
  for (size_t l = 0; j0 + l < valid; l++)
    lane_max[l] = s[j0 + l] > lane_max[l] ? s[j0 + l] : lane_max[l];
  for (size_t half = 8; half > 0; half /= 2)
    for (size_t l = 0; l < half; l++)
      lane_max[l] = lane_max[l + half] > lane_max[l] ? lane_max[l + half] : lane_max[l];
  return lane_max[0];
}

/* s [width] -> exp(s - shift) for the first `valid` entries, 0 after; returns their sum.
 * Three plain passes over the row (in cache), which every clone vectorises: exp over the
 * whole vectors that hold valid entries, zeros after the valid ones, then 16 lanes' sums. */
EELLM_VECTORIZED static float exp_shifted(float *s, size_t width, size_t valid, float shift) {
  size_t end = whole_vectors(valid);
#pragma omp simd
  for (size_t j = 0; j < end; j++) s[j] = eellm_vexpf(s[j] - shift);
  for (size_t j = valid; j < width; j++) s[j] = 0;
  float lane_sum[16] = {0};
  for (size_t j0 = 0; j0 < end; j0 += 16)
    for (size_t l = 0; l < 16; l++) lane_sum[l] += s[j0 + l];
  for (size_t half = 8; half > 0; half /= 2)
    for (size_t l = 0; l < half; l++) lane_sum[l] += lane_sum[l + half];
  return lane_sum[0];
}

EELLM_VECTORIZED static void scale_row(float *x, size_t n, float by) {
  for (size_t i = 0; i < n; i++) x[i] *= by;
}

/* The work of a block of up to QUERY_BLOCK rows: a strip's scores (and, in backward, their
 * gradients) and a chunk's transposed keys (and values). */
static size_t tile_floats(size_t rows, size_t keys) {
  return min_size(rows, STRIP) * whole_vectors(min_size(keys, KEY_CHUNK));
}
static size_t chunk_floats(size_t keys, size_t hd) {
  return hd * whole_vectors(min_size(keys, KEY_CHUNK));
}

/* One query block's running softmax: each row's max and sum over the chunks so far. */
struct online_softmax {
  float max[QUERY_BLOCK];
  double sum[QUERY_BLOCK];
};

/* Rows [s0, s0 + rows) of a block, row r seeing chunk keys 0 .. valid(r) - 1 of the
 * scores s [rows, width]: s becomes the chunk's unnormalised probabilities, and where an
 * earlier chunk set a row's max lower, its sum and output row are rescaled. */
static void softmax_update(struct online_softmax *sm, size_t s0, size_t rows, size_t first_seen,
                           size_t c0, size_t nk, float *s, size_t width, float *out, size_t ld_out,
                           size_t hd) {
  for (size_t r = 0; r < rows; r++) {
    size_t i = s0 + r, valid = seen_in_chunk(first_seen + i, c0, nk);
    float *s_r = s + r * width;
    float row_max = max_of(s_r, valid, sm->max[i]);
    float part = exp_shifted(s_r, width, valid, row_max);
    if (c0 > 0 && valid > 0) {
      float alpha = expf(sm->max[i] - row_max);
      sm->sum[i] *= alpha;
      scale_row(out + i * ld_out, hd, alpha);
    }
    if (valid > 0) sm->max[i] = row_max;
    sm->sum[i] += part;
  }
}

/* A block of rows <= QUERY_BLOCK, row r seeing keys 0 .. first_seen + r - 1 (at most
 * `keys`): the online softmax keeps each row's running max and sum over the chunks and
 * rescales the output rows, which hold the unnormalised sum of p v until the end. */
static void attend_block(size_t rows, size_t keys, size_t first_seen, size_t hd, const float *q,
                         size_t ld_q, const float *k, size_t ld_k, const float *v, size_t ld_v,
                         float *out, size_t ld_out, float *work, float *lse, size_t ld_lse) {
  float scale = 1.0f / sqrtf((float)hd);
  int tiles = tiled(rows, hd);
  float *k_t = work, *scores = k_t + chunk_floats(keys, hd);
  struct online_softmax sm;
  keys = min_size(keys, first_seen + rows - 1);
  for (size_t r = 0; r < rows; r++) sm.max[r] = -INFINITY, sm.sum[r] = 0;
  for (size_t c0 = 0; c0 < keys; c0 += KEY_CHUNK) {
    size_t nk = min_size(KEY_CHUNK, keys - c0);
    if (tiles) transpose_padded(nk, hd, k + c0 * ld_k, ld_k, k_t);
    for (size_t s0 = 0, strip = strip_rows(tiles); s0 < rows; s0 += strip) {
      size_t n = min_size(strip, rows - s0);
      size_t seen = seen_in_chunk(first_seen + s0 + n - 1, c0, nk);
      if (!seen) continue; /* past this strip's last key */
      size_t width = whole_vectors(seen);
      scores_product(tiles, n, seen, width, hd, scale, q + s0 * ld_q, ld_q, k + c0 * ld_k, ld_k,
                     k_t, whole_vectors(nk), scores);
      softmax_update(&sm, s0, n, first_seen, c0, nk, scores, width, out, ld_out, hd);
      /* every row sees chunk 0 (first_seen >= 1): it writes, later chunks add */
      values_product(tiles, n, seen, hd, 1.0f, scores, width, v + c0 * ld_v, ld_v, c0 > 0,
                     out + s0 * ld_out, ld_out);
    }
  }
  for (size_t r = 0; r < rows; r++) {
    scale_row(out + r * ld_out, hd, (float)(1.0 / sm.sum[r]));
    if (lse) lse[r * ld_lse] = (float)(sm.max[r] + log(sm.sum[r]));
  }
}

void eellm_cpu_attend(size_t rows, size_t keys, size_t first_seen, size_t hd, const float *q,
                      size_t ld_q, const float *k, size_t ld_k, const float *v, size_t ld_v,
                      float *out, size_t ld_out, float *work, float *lse, size_t ld_lse) {
  for (size_t r0 = 0; r0 < rows; r0 += QUERY_BLOCK)
    attend_block(min_size(QUERY_BLOCK, rows - r0), keys, first_seen + r0, hd, q + r0 * ld_q, ld_q,
                 k, ld_k, v, ld_v, out + r0 * ld_out, ld_out, work, lse ? lse + r0 * ld_lse : NULL,
                 ld_lse);
}

size_t eellm_cpu_attend_work_floats(size_t rows, size_t keys, size_t hd) {
  return tile_floats(rows, keys) + chunk_floats(keys, hd);
}

/* ---- training attention: whole sequences ---------------------------------- */

/* Work (floats): forward, eellm_cpu_attend_work_floats(T, T, hd); backward, a strip's
 * probabilities and their gradients (tile_floats each) and a chunk's transposed keys and
 * values (chunk_floats each); with RoPE, cos/sin tables [T, hd/2] each plus rotated q, k
 * [T, hd] each and, in backward, their gradients [T, hd] each. */
struct attention_work {
  float *tiles, *probs, *dprobs, *k_t, *v_t, *cos, *sin, *q_rot, *k_rot, *dq_rot, *dk_rot;
};

static size_t tiles_floats(size_t T, size_t hd, int backward) {
  return backward ? 2 * (tile_floats(T, T) + chunk_floats(T, hd))
                  : eellm_cpu_attend_work_floats(T, T, hd);
}

static size_t work_floats(size_t T, size_t hd, int rope, int backward) {
  size_t th = T * hd, n = tiles_floats(T, hd, backward);
  if (rope) n += th /* cos, sin */ + 2 * th /* q_rot, k_rot */ + (backward ? 2 * th : 0);
  return n;
}

size_t eellm_cpu_attention_work_bytes(size_t T, size_t hd, int rope, int backward) {
  return work_floats(T, hd, rope, backward) * sizeof(float);
}

static struct attention_work carve(float *base, size_t T, size_t hd, int rope, int backward) {
  size_t th = T * hd;
  struct attention_work w = {.tiles = base};
  if (backward) {
    w.probs = base;
    w.dprobs = w.probs + tile_floats(T, T);
    w.k_t = w.dprobs + tile_floats(T, T);
    w.v_t = w.k_t + chunk_floats(T, hd);
  }
  float *next = base + tiles_floats(T, hd, backward);
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
                       out + row0 * ld_out + h * hd, ld_out, w.tiles, lse + row0 * ld_lse + h,
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
  float *p, *dp, *k_t, *v_t;
};

/* Query rows [s0, s0 + rows) against the keys [c0, c0 + nk) of a chunk, of which the last
 * row sees `seen`; p and dp `width` wide. */
struct strip {
  int tiles;
  size_t s0, rows, c0, nk, seen, width;
};

/* p = softmax probabilities from the saved lse (0 where masked), dp = dO v^T. */
static void strip_probs(const struct head_bwd *g, const struct strip *st) {
  float scale = 1.0f / sqrtf((float)g->hd);
  size_t ld_t = whole_vectors(st->nk);
  scores_product(st->tiles, st->rows, st->seen, st->width, g->hd, scale, g->q + st->s0 * g->ld_qk,
                 g->ld_qk, g->k + st->c0 * g->ld_qk, g->ld_qk, g->k_t, ld_t, g->p);
  scores_product(st->tiles, st->rows, st->seen, st->width, g->hd, 1.0f,
                 g->dout + st->s0 * g->ld_dout, g->ld_dout, g->v + st->c0 * g->ld_v, g->ld_v,
                 g->v_t, ld_t, g->dp);
  for (size_t r = 0; r < st->rows; r++)
    exp_shifted(g->p + r * st->width, st->width, seen_in_chunk(st->s0 + r + 1, st->c0, st->nk),
                g->lse[(st->s0 + r) * g->ld_lse]);
}

/* dot[r] += sum_j p[r, j] dp[r, j]: the softmax backward's row terms. */
EELLM_VECTORIZED static void add_row_dots(const struct head_bwd *g, size_t rows, size_t width,
                                          double *dot) {
  for (size_t r = 0; r < rows; r++) {
    const float *p = g->p + r * width, *dp = g->dp + r * width;
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (size_t j = 0; j < width; j++) part += p[j] * dp[j];
    dot[r] += part;
  }
}

/* dp [rows, width] -> dS = p (dp - dot), row by row. */
EELLM_VECTORIZED static void softmax_grads(const float *p, float *dp, size_t rows, size_t width,
                                           const double *dot) {
  for (size_t r = 0; r < rows; r++) {
    const float *p_row = p + r * width;
    float *ds = dp + r * width, d = (float)dot[r];
    for (size_t j = 0; j < width; j++) ds[j] = p_row[j] * (ds[j] - d);
  }
}

/* c [m, hd] += alpha x^T y for x [k, m] (ld_x), y [k, hd] (ld_y). */
static void transposed_product(int tiles, size_t m, size_t hd, size_t k, float alpha,
                               const float *x, size_t ld_x, const float *y, size_t ld_y, float *c,
                               size_t ld_c) {
  if (tiles)
    tile_product(m, hd, k, alpha, x, 1, ld_x, y, ld_y, 1, c, ld_c);
  else
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, (int)hd, (int)k, alpha, x,
                (int)ld_x, y, (int)ld_y, 1.0f, c, (int)ld_c);
}

/* From the strip's p and dp: dS in dp, then dq += scale dS k, dk += scale dS^T q and
 * dv += p^T dO, over the keys the strip sees. */
static void strip_grads(const struct head_bwd *g, const struct strip *st, const double *dot) {
  float scale = 1.0f / sqrtf((float)g->hd);
  size_t s0 = st->s0, c0 = st->c0;
  softmax_grads(g->p, g->dp, st->rows, st->width, dot);
  values_product(st->tiles, st->rows, st->seen, g->hd, scale, g->dp, st->width,
                 g->k + c0 * g->ld_qk, g->ld_qk, 1, g->dq + s0 * g->ld_dqk, g->ld_dqk);
  transposed_product(st->tiles, st->seen, g->hd, st->rows, scale, g->dp, st->width,
                     g->q + s0 * g->ld_qk, g->ld_qk, g->dk + c0 * g->ld_dqk, g->ld_dqk);
  transposed_product(st->tiles, st->seen, g->hd, st->rows, 1.0f, g->p, st->width,
                     g->dout + s0 * g->ld_dout, g->ld_dout, g->dv + c0 * g->ld_dv, g->ld_dv);
}

/* Query rows [r0, r0 + rows) of a sequence (row t sees keys 0 .. t). The row terms need
 * every chunk's p and dp before any gradient: with several chunks a first pass computes
 * them, and the second computes p and dp again. */
static void head_block_bwd(const struct head_bwd *g, size_t r0, size_t rows) {
  size_t keys = r0 + rows;
  double dot[QUERY_BLOCK] = {0};
  int one_chunk = keys <= KEY_CHUNK, tiles = tiled(rows, g->hd);
  for (int grads = one_chunk; grads <= 1; grads++)
    for (size_t c0 = 0; c0 < keys; c0 += KEY_CHUNK) {
      size_t nk = min_size(KEY_CHUNK, keys - c0);
      if (tiles) {
        transpose_padded(nk, g->hd, g->k + c0 * g->ld_qk, g->ld_qk, g->k_t);
        transpose_padded(nk, g->hd, g->v + c0 * g->ld_v, g->ld_v, g->v_t);
      }
      for (size_t s0 = r0, strip = strip_rows(tiles); s0 < r0 + rows; s0 += strip) {
        size_t n = min_size(strip, r0 + rows - s0), seen = seen_in_chunk(s0 + n, c0, nk);
        if (!seen) continue; /* past this strip's last key */
        struct strip st = {tiles, s0, n, c0, nk, seen, whole_vectors(seen)};
        strip_probs(g, &st);
        if (!grads || one_chunk) add_row_dots(g, n, st.width, dot + (s0 - r0));
        if (grads) strip_grads(g, &st, dot + (s0 - r0));
      }
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
                           .dp = w.dprobs,
                           .k_t = w.k_t,
                           .v_t = w.v_t};
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

/* Work (floats): cos, sin [n, hd/2] each, rotated queries [n, hd], and the work of
 * eellm_cpu_attend for n rows and capacity keys: a block has at most n rows and, its
 * positions being below capacity, at most capacity keys. */
size_t eellm_cpu_attention_cached_work_bytes(size_t n, size_t hd, size_t capacity) {
  return (n * hd + n * hd + eellm_cpu_attend_work_floats(n, capacity, hd)) * sizeof(float);
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
