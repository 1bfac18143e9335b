/* Causal multi-head self-attention on packed qkv, with optional RoPE
 * (Hugging Face Llama / GPT-NeoX "rotate half" convention). One task handles
 * every sequence and head of its rows, one (sequence, head) block at a time. */
#include "codelets.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

struct attention_args {
  unsigned seq_len, n_heads;
  int rope;
  float rope_theta;
  int beta_dx; /* backward only */
};

/* Sizes shared by forward and backward, read from the qkv buffer. */
struct attention_shape {
  size_t T, H, hd, D, n_seq;
};

static struct attention_shape attention_shape(void *qkv, const struct attention_args *args) {
  struct attention_shape s;
  s.T = args->seq_len;
  s.H = args->n_heads;
  s.D = STARPU_MATRIX_GET_NX(qkv) / 3;
  s.hd = s.D / s.H;
  s.n_seq = STARPU_MATRIX_GET_NY(qkv) / s.T;
  return s;
}

/* Per-task scratch (floats): scores [T, T], dscores [T, T] (backward), and with
 * RoPE cos/sin tables [T, hd/2] each plus rotated q, k [T, hd] each and, in
 * backward, their gradients [T, hd] each. */
struct attention_scratch {
  float *base, *scores, *dscores, *cos, *sin, *q_rot, *k_rot, *dq_rot, *dk_rot;
};

static struct attention_scratch scratch_alloc(const struct attention_shape *s, int rope,
                                              int backward) {
  size_t tt = s->T * s->T, th = s->T * s->hd;
  size_t n = tt * (backward ? 2 : 1);
  if (rope) n += th /* cos, sin */ + 2 * th /* q_rot, k_rot */ + (backward ? 2 * th : 0);
  struct attention_scratch w = {0};
  w.base = malloc(n * sizeof(float));
  if (!w.base) {
    fprintf(stderr, "eellm: attention: out of memory for %zu scratch floats\n", n);
    abort();
  }
  w.scores = w.base;
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

/* cos/sin [T, hd/2]: angle = position * theta^(-2i/hd). */
static void rope_tables(float *cos_t, float *sin_t, size_t T, size_t hd, float theta) {
  size_t half = hd / 2;
  for (size_t i = 0; i < half; i++) {
    double freq = pow((double)theta, -2.0 * (double)i / (double)hd);
    for (size_t p = 0; p < T; p++) {
      cos_t[p * half + i] = (float)cos((double)p * freq);
      sin_t[p * half + i] = (float)sin((double)p * freq);
    }
  }
}

/* x [T, hd] (stride ld_x) -> y [T, hd] contiguous:
 * (x_i, x_{i+h}) -> (x_i cos - x_{i+h} sin, x_{i+h} cos + x_i sin), h = hd/2. */
static void rope_rotate(const float *x, size_t ld_x, float *y, size_t T, size_t hd,
                        const float *cos_t, const float *sin_t) {
  size_t half = hd / 2;
  for (size_t p = 0; p < T; p++) {
    const float *xr = x + p * ld_x, *c = cos_t + p * half, *s = sin_t + p * half;
    float *yr = y + p * hd;
    for (size_t i = 0; i < half; i++) {
      yr[i] = xr[i] * c[i] - xr[i + half] * s[i];
      yr[i + half] = xr[i + half] * c[i] + xr[i] * s[i];
    }
  }
}

/* dx [T, hd] (stride ld_dx) = R^T dy (+= with accumulate), dy [T, hd] contiguous: the
 * transpose of a rotation is the rotation by the opposite angle. */
static void rope_unrotate(const float *dy, float *dx, size_t ld_dx, int accumulate, size_t T,
                          size_t hd, const float *cos_t, const float *sin_t) {
  size_t half = hd / 2;
  for (size_t p = 0; p < T; p++) {
    const float *g = dy + p * hd, *c = cos_t + p * half, *s = sin_t + p * half;
    float *dr = dx + p * ld_dx;
    for (size_t i = 0; i < half; i++) {
      float lo = g[i] * c[i] + g[i + half] * s[i];
      float hi = g[i + half] * c[i] - g[i] * s[i];
      dr[i] = accumulate ? dr[i] + lo : lo;
      dr[i + half] = accumulate ? dr[i + half] + hi : hi;
    }
  }
}

/* Where one (sequence, head) block's q and k are read from: the qkv rows
 * directly, or the rotated copies in scratch. */
struct qk_view {
  const float *q, *k;
  size_t ld;
};

static struct qk_view load_qk(const float *q_raw, const float *k_raw, size_t ld_qkv,
                              const struct attention_shape *s, const struct attention_scratch *w) {
  if (!w->cos) return (struct qk_view){q_raw, k_raw, ld_qkv};
  rope_rotate(q_raw, ld_qkv, w->q_rot, s->T, s->hd, w->cos, w->sin);
  rope_rotate(k_raw, ld_qkv, w->k_rot, s->T, s->hd, w->cos, w->sin);
  return (struct qk_view){w->q_rot, w->k_rot, s->hd};
}

/* scores [T, T] = scale * Q K^T (the upper triangle is computed and ignored). */
static void scaled_scores(const struct qk_view *qk, size_t T, size_t hd, float *scores) {
  float scale = 1.0f / sqrtf((float)hd);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)hd, scale, qk->q,
              (int)qk->ld, qk->k, (int)qk->ld, 0.0f, scores, (int)T);
}

/* scores [T, T] -> causal probabilities in place (zero above the diagonal);
 * lse[t * ld_lse] = log-sum-exp of row t's scores over keys 0..t. */
static void causal_softmax(float *scores, size_t T, float *lse, size_t ld_lse) {
  for (size_t t = 0; t < T; t++) {
    float *row = scores + t * T;
    float max = row[0];
    for (size_t j = 1; j <= t; j++) max = row[j] > max ? row[j] : max;
    double sum = 0;
    for (size_t j = 0; j <= t; j++) {
      row[j] = expf(row[j] - max);
      sum += row[j];
    }
    float inv_sum = (float)(1.0 / sum);
    for (size_t j = 0; j <= t; j++) row[j] *= inv_sum;
    for (size_t j = t + 1; j < T; j++) row[j] = 0;
    lse[t * ld_lse] = (float)(max + log(sum));
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

/* From dS in scratch: dQ = scale dS K and dK = scale dS^T Q, written (or added,
 * with accumulate) at dq and dq + D (stride ld_dqkv). With RoPE the products
 * go through scratch and are rotated back. */
static void qk_grads(const struct attention_shape *s, const struct attention_scratch *w,
                     const struct qk_view *qk, float *dq, size_t ld_dqkv, int accumulate) {
  float scale = 1.0f / sqrtf((float)s->hd);
  int T = (int)s->T, hd = (int)s->hd;
  float *dk = dq + s->D;
  int rope = w->cos != NULL;
  float *dq_to = rope ? w->dq_rot : dq, *dk_to = rope ? w->dk_rot : dk;
  int ld_to = rope ? hd : (int)ld_dqkv;
  float beta = !rope && accumulate ? 1.0f : 0.0f;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, w->dscores, T, qk->k,
              (int)qk->ld, beta, dq_to, ld_to);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, w->dscores, T, qk->q,
              (int)qk->ld, beta, dk_to, ld_to);
  if (rope) {
    rope_unrotate(w->dq_rot, dq, ld_dqkv, accumulate, s->T, s->hd, w->cos, w->sin);
    rope_unrotate(w->dk_rot, dk, ld_dqkv, accumulate, s->T, s->hd, w->cos, w->sin);
  }
}

/* qkv [N, 3D] (R), out [N, D] (W), lse [N, H] (W); N = n_seq * T, D = H * hd. */
static void attention_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct attention_args *args = cl_arg;
  struct attention_shape s = attention_shape(buffers[0], args);
  const float *qkv = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t ld_qkv = STARPU_MATRIX_GET_LD(buffers[0]);
  float *out = (float *)STARPU_MATRIX_GET_PTR(buffers[1]);
  size_t ld_out = STARPU_MATRIX_GET_LD(buffers[1]);
  float *lse = (float *)STARPU_MATRIX_GET_PTR(buffers[2]);
  size_t ld_lse = STARPU_MATRIX_GET_LD(buffers[2]);

  struct attention_scratch w = scratch_alloc(&s, args->rope, 0);
  if (args->rope) rope_tables(w.cos, w.sin, s.T, s.hd, args->rope_theta);
  for (size_t b = 0; b < s.n_seq; b++) {
    size_t row0 = b * s.T;
    for (size_t h = 0; h < s.H; h++) {
      const float *q = qkv + row0 * ld_qkv + h * s.hd;
      struct qk_view qk = load_qk(q, q + s.D, ld_qkv, &s, &w);
      scaled_scores(&qk, s.T, s.hd, w.scores);
      causal_softmax(w.scores, s.T, lse + row0 * ld_lse + h, ld_lse);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)s.T, (int)s.hd, (int)s.T, 1.0f,
                  w.scores, (int)s.T, q + 2 * s.D, (int)ld_qkv, 0.0f,
                  out + row0 * ld_out + h * s.hd, (int)ld_out);
    }
  }
  free(w.base);
}

/* qkv [N, 3D] (R), lse [N, H] (R), dout [N, D] (R), dqkv [N, 3D] (W or RW). */
static void attention_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct attention_args *args = cl_arg;
  struct attention_shape s = attention_shape(buffers[0], args);
  const float *qkv = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t ld_qkv = STARPU_MATRIX_GET_LD(buffers[0]);
  const float *lse = (const float *)STARPU_MATRIX_GET_PTR(buffers[1]);
  size_t ld_lse = STARPU_MATRIX_GET_LD(buffers[1]);
  const float *dout = (const float *)STARPU_MATRIX_GET_PTR(buffers[2]);
  size_t ld_dout = STARPU_MATRIX_GET_LD(buffers[2]);
  float *dqkv = (float *)STARPU_MATRIX_GET_PTR(buffers[3]);
  size_t ld_dqkv = STARPU_MATRIX_GET_LD(buffers[3]);
  float beta = args->beta_dx ? 1.0f : 0.0f;
  int T = (int)s.T, hd = (int)s.hd;

  struct attention_scratch w = scratch_alloc(&s, args->rope, 1);
  if (args->rope) rope_tables(w.cos, w.sin, s.T, s.hd, args->rope_theta);
  for (size_t b = 0; b < s.n_seq; b++) {
    size_t row0 = b * s.T;
    for (size_t h = 0; h < s.H; h++) {
      const float *q = qkv + row0 * ld_qkv + h * s.hd, *v = q + 2 * s.D;
      const float *dO = dout + row0 * ld_dout + h * s.hd;
      float *dq = dqkv + row0 * ld_dqkv + h * s.hd, *dv = dq + 2 * s.D;
      struct qk_view qk = load_qk(q, q + s.D, ld_qkv, &s, &w);
      scaled_scores(&qk, s.T, s.hd, w.scores);
      causal_probs_from_lse(w.scores, s.T, lse + row0 * ld_lse + h, ld_lse);
      /* dV = P^T dO; dP = dO V^T. */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, w.scores, T, dO,
                  (int)ld_dout, beta, dv, (int)ld_dqkv);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, (int)ld_dout, v,
                  (int)ld_qkv, 0.0f, w.dscores, T);
      softmax_backward(w.scores, w.dscores, s.T);
      qk_grads(&s, &w, &qk, dq, ld_dqkv, args->beta_dx);
    }
  }
  free(w.base);
}

static struct starpu_perfmodel attention_fwd_model = {.type = STARPU_HISTORY_BASED,
                                                      .symbol = "eellm_attention_fwd"};
static struct starpu_perfmodel attention_bwd_model = {.type = STARPU_HISTORY_BASED,
                                                      .symbol = "eellm_attention_bwd"};

static struct starpu_codelet attention_fwd_cl = {
    .cpu_funcs = {attention_fwd_cpu},
    .cpu_funcs_name = {"attention_fwd_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &attention_fwd_model,
    .name = "attention_fwd",
};
static struct starpu_codelet attention_bwd_cl = {
    .cpu_funcs = {attention_bwd_cpu},
    .cpu_funcs_name = {"attention_bwd_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &attention_bwd_model,
    .name = "attention_bwd",
};

/* Wrong head counts or sequence lengths would make the kernels read past rows. */
static void check_qkv_shape(starpu_data_handle_t qkv, unsigned seq_len, unsigned n_heads,
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
}

void eellm_insert_attention_fwd(starpu_data_handle_t qkv, starpu_data_handle_t out,
                                starpu_data_handle_t lse, unsigned seq_len, unsigned n_heads,
                                int rope, float rope_theta, const struct eellm_task_info *info) {
  check_qkv_shape(qkv, seq_len, n_heads, rope);
  struct attention_args args = {seq_len, n_heads, rope, rope_theta, 0};
  struct starpu_data_descr buffers[] = {
      {qkv, STARPU_R},
      {out, STARPU_W},
      {lse, STARPU_W},
  };
  eellm_submit(&attention_fwd_cl, buffers, 3, &args, sizeof args, info);
}

void eellm_insert_attention_bwd(starpu_data_handle_t qkv, starpu_data_handle_t lse,
                                starpu_data_handle_t dout, starpu_data_handle_t dqkv,
                                unsigned seq_len, unsigned n_heads, int rope, float rope_theta,
                                int beta_dx, const struct eellm_task_info *info) {
  check_qkv_shape(qkv, seq_len, n_heads, rope);
  struct attention_args args = {seq_len, n_heads, rope, rope_theta, beta_dx};
  struct starpu_data_descr buffers[] = {
      {qkv, STARPU_R},
      {lse, STARPU_R},
      {dout, STARPU_R},
      {dqkv, beta_dx ? STARPU_RW : STARPU_W},
  };
  eellm_submit(&attention_bwd_cl, buffers, 4, &args, sizeof args, info);
}
