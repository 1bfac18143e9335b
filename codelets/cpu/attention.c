/* Causal multi-head self-attention on packed qkv, with optional RoPE (Hugging
 * Face Llama / GPT-NeoX "rotate half" convention): the training forward and
 * backward over whole sequences, and generation's attention of new rows over a
 * key/value cache at absolute positions. Both forwards share one RoPE and one
 * causal attention routine (eellm_cpu_attend). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

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

/* ---- causal softmax and one head's attention ------------------------------ */

void eellm_cpu_causal_softmax(size_t rows, size_t keys, size_t first_seen, float *scores,
                              size_t ld_s, float *lse, size_t ld_lse) {
  for (size_t r = 0; r < rows; r++) {
    float *row = scores + r * ld_s;
    size_t seen = first_seen + r;
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
    if (lse) lse[r * ld_lse] = (float)(max + log(sum));
  }
}

/* scores [rows, keys] = scale * q k^T (the masked part is computed and ignored). */
static void scaled_scores(size_t rows, size_t keys, size_t hd, const float *q, size_t ld_q,
                          const float *k, size_t ld_k, float *scores) {
  float scale = 1.0f / sqrtf((float)hd);
  eellm_cpu_matmul(rows, keys, hd, 1, scale, q, ld_q, k, ld_k, 0.0f, scores, keys);
}

void eellm_cpu_attend(size_t rows, size_t keys, size_t first_seen, size_t hd, const float *q,
                      size_t ld_q, const float *k, size_t ld_k, const float *v, size_t ld_v,
                      float *out, size_t ld_out, float *scores, float *lse, size_t ld_lse) {
  scaled_scores(rows, keys, hd, q, ld_q, k, ld_k, scores);
  eellm_cpu_causal_softmax(rows, keys, first_seen, scores, keys, lse, ld_lse);
  eellm_cpu_matmul(rows, hd, keys, 0, 1.0f, scores, keys, v, ld_v, 0.0f, out, ld_out);
}

/* ---- training attention: whole sequences ---------------------------------- */

/* Work (floats): scores [T, T], dscores [T, T] (backward), and with RoPE cos/sin
 * tables [T, hd/2] each plus rotated q, k [T, hd] each and, in backward, their
 * gradients [T, hd] each. */
struct attention_work {
  float *scores, *dscores, *cos, *sin, *q_rot, *k_rot, *dq_rot, *dk_rot;
};

static size_t work_floats(size_t T, size_t hd, int rope, int backward) {
  size_t tt = T * T, th = T * hd;
  size_t n = tt * (backward ? 2 : 1);
  if (rope) n += th /* cos, sin */ + 2 * th /* q_rot, k_rot */ + (backward ? 2 * th : 0);
  return n;
}

size_t eellm_cpu_attention_work_bytes(size_t T, size_t hd, int rope, int backward) {
  return work_floats(T, hd, rope, backward) * sizeof(float);
}

static struct attention_work carve(float *base, size_t T, size_t hd, int rope, int backward) {
  size_t tt = T * T, th = T * hd;
  struct attention_work w = {0};
  w.scores = base;
  float *next = w.scores + tt;
  if (backward) {
    w.dscores = next;
    next += tt;
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
                       out + row0 * ld_out + h * hd, ld_out, w.scores, lse + row0 * ld_lse + h,
                       ld_lse);
    }
  }
}

/* scores [T, T] -> causal probabilities in place, from the saved log-sum-exp. */
static void causal_probs_from_lse(float *scores, size_t T, const float *lse, size_t ld_lse) {
  for (size_t t = 0; t < T; t++) {
    float *row = scores + t * T;
    float row_lse = lse[t * ld_lse];
    for (size_t j = 0; j <= t; j++) row[j] = expf(row[j] - row_lse);
    for (size_t j = t + 1; j < T; j++) row[j] = 0;
  }
}

/* dscores [T, T] holds dP on entry and dS = P * (dP - rowsum(dP * P)) on exit. */
static void softmax_backward(const float *probs, float *dscores, size_t T) {
  for (size_t t = 0; t < T; t++) {
    const float *p = probs + t * T;
    float *d = dscores + t * T;
    double dot = 0;
    for (size_t j = 0; j <= t; j++) dot += (double)d[j] * p[j];
    for (size_t j = 0; j <= t; j++) d[j] = p[j] * (d[j] - (float)dot);
    for (size_t j = t + 1; j < T; j++) d[j] = 0;
  }
}

/* From dS in work: dQ = scale dS K and dK = scale dS^T Q, written (or added,
 * with accumulate) at dq and dq + D (stride ld_dqkv). With RoPE the products
 * go through work and are rotated back. */
static void qk_grads(size_t T, size_t hd, size_t D, const struct attention_work *w,
                     const struct qk_view *qk, float *dq, size_t ld_dqkv, int accumulate) {
  float scale = 1.0f / sqrtf((float)hd);
  float *dk = dq + D;
  int rope = w->cos != NULL;
  float *dq_to = rope ? w->dq_rot : dq, *dk_to = rope ? w->dk_rot : dk;
  int ld_to = rope ? (int)hd : (int)ld_dqkv;
  float beta = !rope && accumulate ? 1.0f : 0.0f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)hd, (int)T, scale,
              w->dscores, (int)T, qk->k, (int)qk->ld, beta, dq_to, ld_to);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)hd, (int)T, scale,
              w->dscores, (int)T, qk->q, (int)qk->ld, beta, dk_to, ld_to);
  if (rope) {
    eellm_cpu_rope_unrotate(T, hd, w->dq_rot, hd, dq, ld_dqkv, accumulate, w->cos, w->sin,
                            hd / 2);
    eellm_cpu_rope_unrotate(T, hd, w->dk_rot, hd, dk, ld_dqkv, accumulate, w->cos, w->sin,
                            hd / 2);
  }
}

void eellm_cpu_attention_bwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                             float rope_theta, int beta_dx, const float *qkv, size_t ld_qkv,
                             const float *lse, size_t ld_lse, const float *dout, size_t ld_dout,
                             float *dqkv, size_t ld_dqkv, void *work) {
  size_t D = H * hd;
  float beta = beta_dx ? 1.0f : 0.0f;
  struct attention_work w = carve(work, T, hd, rope, 1);
  if (rope) eellm_cpu_rope_table(w.cos, w.sin, 0, T, hd, rope_theta);
  for (size_t b = 0; b < n_seq; b++) {
    size_t row0 = b * T;
    for (size_t h = 0; h < H; h++) {
      const float *q = qkv + row0 * ld_qkv + h * hd, *v = q + 2 * D;
      const float *dO = dout + row0 * ld_dout + h * hd;
      float *dq = dqkv + row0 * ld_dqkv + h * hd, *dv = dq + 2 * D;
      struct qk_view qk = load_qk(q, q + D, ld_qkv, T, hd, &w);
      scaled_scores(T, T, hd, qk.q, qk.ld, qk.k, qk.ld, w.scores);
      causal_probs_from_lse(w.scores, T, lse + row0 * ld_lse + h, ld_lse);
      /* dV = P^T dO; dP = dO V^T. */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)hd, (int)T, 1.0f,
                  w.scores, (int)T, dO, (int)ld_dout, beta, dv, (int)ld_dqkv);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)hd, 1.0f, dO,
                  (int)ld_dout, v, (int)ld_qkv, 0.0f, w.dscores, (int)T);
      softmax_backward(w.scores, w.dscores, T);
      qk_grads(T, hd, D, &w, &qk, dq, ld_dqkv, beta_dx);
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
