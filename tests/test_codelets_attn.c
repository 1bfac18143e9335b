/* Attention codelets as real StarPU tasks against a double-precision reference:
 * out and lse against the reference forward, every element of dqkv against
 * central finite differences of <dout, out(qkv)>, accumulation with beta_dx = 1,
 * padded rows (LD), and the RoPE pairing convention on hand-computed scores;
 * on every backend of the build (tu_for_each_backend). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "codelets/codelets.h"
#include "testutil.h"

struct attn_case {
  size_t B, T, H, D;
  int rope;
  float theta;
  size_t pad; /* extra floats at the end of each qkv / dqkv row */
};

/* The reference forward's inputs, outputs and scratch, all double. */
struct attn_ref {
  const struct attn_case *c;
  double *qkv;        /* [N, 3D], perturbed in place by tu_fd */
  const double *dout; /* [N, D] upstream gradient */
  double *out, *lse;  /* [N, D], [N, H] */
  double *k_rot;      /* [T, hd] */
  double *q_rot;      /* [hd] */
  double *scores;     /* [T] */
};

/* Copies one head's q or k (third = 0 or 1) of row n, rotated when RoPE is on. */
static void ref_head_vec(const struct attn_ref *r, size_t n, size_t third, size_t h, double *x) {
  const struct attn_case *c = r->c;
  size_t hd = c->D / c->H;
  for (size_t i = 0; i < hd; i++) x[i] = r->qkv[n * 3 * c->D + third * c->D + h * hd + i];
  if (c->rope) tu_ref_rope(x, n % c->T, hd, c->theta);
}

/* One query row t of sequence b, head h: softmax over keys 0..t, out and lse. */
static void ref_query(struct attn_ref *r, size_t b, size_t h, size_t t) {
  const struct attn_case *c = r->c;
  size_t hd = c->D / c->H, n = b * c->T + t;
  ref_head_vec(r, n, 0, h, r->q_rot);
  double max = -INFINITY;
  for (size_t j = 0; j <= t; j++) {
    double dot = 0;
    for (size_t i = 0; i < hd; i++) dot += r->q_rot[i] * r->k_rot[j * hd + i];
    r->scores[j] = dot / sqrt((double)hd);
    max = fmax(max, r->scores[j]);
  }
  double sum = 0;
  for (size_t j = 0; j <= t; j++) sum += exp(r->scores[j] - max);
  r->lse[n * c->H + h] = max + log(sum);
  const double *v0 = r->qkv + b * c->T * 3 * c->D + 2 * c->D + h * hd; /* key 0's v */
  for (size_t i = 0; i < hd; i++) {
    double acc = 0;
    for (size_t j = 0; j <= t; j++) acc += exp(r->scores[j] - max) / sum * v0[j * 3 * c->D + i];
    r->out[n * c->D + h * hd + i] = acc;
  }
}

static void ref_forward(struct attn_ref *r) {
  const struct attn_case *c = r->c;
  size_t hd = c->D / c->H;
  for (size_t b = 0; b < c->B; b++)
    for (size_t h = 0; h < c->H; h++) {
      for (size_t j = 0; j < c->T; j++) ref_head_vec(r, b * c->T + j, 1, h, r->k_rot + j * hd);
      for (size_t t = 0; t < c->T; t++) ref_query(r, b, h, t);
    }
}

/* L(qkv) = <dout, out(qkv)>. */
static double ref_loss(void *ctx) {
  struct attn_ref *r = ctx;
  ref_forward(r);
  double loss = 0;
  size_t n = r->c->B * r->c->T * r->c->D;
  for (size_t i = 0; i < n; i++) loss += r->dout[i] * r->out[i];
  return loss;
}

/* The [rows, cols] part of a padded array, as floats. */
static float *unpad(const float *x, size_t rows, size_t cols, size_t ld) {
  float *y = tu_alloc(rows * cols);
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) y[r * cols + c] = x[r * ld + c];
  return y;
}

static int padding_holds(const float *x, size_t rows, size_t cols, size_t ld, float value) {
  for (size_t r = 0; r < rows; r++)
    for (size_t c = cols; c < ld; c++)
      if (x[r * ld + c] != value) return 0;
  return 1;
}

static void run_case(const struct eellm_task_info *ti, void *ctx) {
  const struct attn_case *c = ctx;
  size_t N = c->B * c->T, W = 3 * c->D, ld = W + c->pad, hd = c->D / c->H;
  char name[160];
  int len = snprintf(name, sizeof name, "attn B%zu T%zu H%zu D%zu rope %d pad %zu", c->B, c->T,
                     c->H, c->D, c->rope, c->pad);
  const float sentinel = 7.0f;

  float *qkv = tu_alloc(N * ld), *dqkv = tu_alloc(N * ld), *dqkv_acc = tu_alloc(N * ld);
  float *out = tu_alloc(N * c->D), *lse = tu_alloc(N * c->H), *dout = tu_alloc(N * c->D);
  for (size_t i = 0; i < N * ld; i++) {
    int in_row = i % ld < W;
    qkv[i] = in_row ? (float)tu_uniform(-1.5, 1.5) : NAN; /* padding must never be read */
    dqkv[i] = in_row ? NAN : sentinel;                      /* mode W: overwritten unread */
    dqkv_acc[i] = in_row ? (float)tu_uniform(-1, 1) : sentinel;
  }
  tu_fill(dout, N * c->D, -1, 1);
  double *acc_before = tu_to_f64(unpad(dqkv_acc, N, W, ld), N * W);

  starpu_data_handle_t h_qkv = tu_matrix_ld(qkv, N, W, ld), h_lse = tu_matrix(lse, N, c->H);
  starpu_data_handle_t h_dout = tu_matrix(dout, N, c->D);
  eellm_insert_attention_fwd(h_qkv, tu_matrix(out, N, c->D), h_lse, c->T, c->H, c->rope, c->theta,
                             ti);
  eellm_insert_attention_bwd(h_qkv, h_lse, h_dout, tu_matrix_ld(dqkv, N, W, ld), c->T, c->H,
                             c->rope, c->theta, 0, ti);
  eellm_insert_attention_bwd(h_qkv, h_lse, h_dout, tu_matrix_ld(dqkv_acc, N, W, ld), c->T, c->H,
                             c->rope, c->theta, 1, ti);
  tu_sync_all();

  struct attn_ref r = {c,
                       tu_to_f64(unpad(qkv, N, W, ld), N * W),
                       tu_to_f64(dout, N * c->D),
                       tu_alloc_f64(N * c->D),
                       tu_alloc_f64(N * c->H),
                       tu_alloc_f64(c->T * hd),
                       tu_alloc_f64(hd),
                       tu_alloc_f64(c->T)};
  ref_forward(&r);
  snprintf(name + len, sizeof name - len, " out");
  tu_check(name, out, r.out, N * c->D, 1e-5, 1e-6);
  snprintf(name + len, sizeof name - len, " lse");
  tu_check(name, lse, r.lse, N * c->H, 1e-5, 1e-6);

  double *grad = tu_alloc_f64(N * W), *acc_want = tu_alloc_f64(N * W);
  for (size_t i = 0; i < N * W; i++) {
    grad[i] = tu_fd(ref_loss, &r, r.qkv, i, 1e-5);
    acc_want[i] = acc_before[i] + grad[i];
  }
  snprintf(name + len, sizeof name - len, " dqkv vs finite differences");
  tu_check(name, unpad(dqkv, N, W, ld), grad, N * W, 1e-4, 1e-5);
  snprintf(name + len, sizeof name - len, " dqkv accumulated (beta_dx 1)");
  tu_check(name, unpad(dqkv_acc, N, W, ld), acc_want, N * W, 1e-4, 1e-5);
  snprintf(name + len, sizeof name - len, " dqkv padding untouched");
  tu_ok(padding_holds(dqkv, N, W, ld, sentinel) && padding_holds(dqkv_acc, N, W, ld, sentinel),
        name);
}

/* Rotate-half pairs (i, i + hd/2), not neighbours: with hd = 4 at position 1,
 * q = e0 turns into (cos 1, 0, sin 1, 0) and q = e1 into (0, cos f, 0, sin f),
 * f = theta^(-1/2). Against a key e2 (resp. e3) at position 0 and a zero key at
 * position 1, query 1's log-sum-exp is log(exp(sin(angle) / 2) + 1). An
 * interleaved convention would give log 2. Head 0 tests pair 0, head 1 pair 1. */
static void rope_convention_check(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  const size_t D = 8, W = 3 * D;
  const float theta = 100;
  float *qkv = tu_alloc(2 * W), *out = tu_alloc(2 * D), *lse = tu_alloc(2 * 2);
  qkv[1 * W + 0] = 1;         /* row 1, q, head 0: e0 */
  qkv[0 * W + D + 2] = 1;     /* row 0, k, head 0: e2 */
  qkv[1 * W + 4 + 1] = 1;     /* row 1, q, head 1: e1 */
  qkv[0 * W + D + 4 + 3] = 1; /* row 0, k, head 1: e3 */
  eellm_insert_attention_fwd(tu_matrix(qkv, 2, W), tu_matrix(out, 2, D), tu_matrix(lse, 2, 2), 2,
                             2, 1, theta, ti);
  tu_sync_all();
  double want[4] = {0, 0, log(exp(sin(1.0) / 2) + 1), log(exp(sin(1.0 / sqrt(theta)) / 2) + 1)};
  tu_check("attn rope rotate-half convention (lse)", lse, want, 4, 1e-6, 1e-7);
}

/* Several query blocks and key chunks of the CPU's tiled kernel (128 rows, 256 keys): keys
 * whose scores grow with their position, so that every row's largest score is in its last
 * chunk and the online softmax must rescale what the earlier chunks gave; out and lse
 * against the reference, dqkv against finite differences on every 23rd element (46th with
 * a head of 16). A head of 8 takes eellm_cpu_matmul's products, one of 16 the kernel's own. */
static void tiled_chunks_check(const struct eellm_task_info *ti, void *ctx) {
  const struct attn_case c = {1, 300, 1, *(const size_t *)ctx, 0, 10000, 0};
  size_t N = c.T, W = 3 * c.D;
  float *qkv = tu_alloc(N * W), *out = tu_alloc(N * c.D), *lse = tu_alloc(N);
  float *dout = tu_alloc(N * c.D), *dqkv = tu_alloc(N * W);
  for (size_t t = 0; t < N; t++)
    for (size_t i = 0; i < c.D; i++) {
      qkv[t * W + i] = (float)tu_uniform(0.5, 1);                          /* q */
      qkv[t * W + c.D + i] = (float)(4.0 * t / N + tu_uniform(-0.1, 0.1)); /* k */
      qkv[t * W + 2 * c.D + i] = (float)tu_uniform(-1, 1);                 /* v */
    }
  tu_fill(dout, N * c.D, -1, 1);
  starpu_data_handle_t h_qkv = tu_matrix(qkv, N, W), h_lse = tu_matrix(lse, N, 1);
  eellm_insert_attention_fwd(h_qkv, tu_matrix(out, N, c.D), h_lse, c.T, c.H, 0, c.theta, ti);
  eellm_insert_attention_bwd(h_qkv, h_lse, tu_matrix(dout, N, c.D), tu_matrix(dqkv, N, W), c.T, c.H,
                             0, c.theta, 0, ti);
  tu_sync_all();
  struct attn_ref r = {&c,
                       tu_to_f64(qkv, N * W),
                       tu_to_f64(dout, N * c.D),
                       tu_alloc_f64(N * c.D),
                       tu_alloc_f64(N),
                       tu_alloc_f64(c.T * c.D),
                       tu_alloc_f64(c.D),
                       tu_alloc_f64(c.T)};
  ref_forward(&r);
  tu_check("attn tiled chunks out", out, r.out, N * c.D, 1e-5, 1e-6);
  tu_check("attn tiled chunks lse", lse, r.lse, N, 1e-5, 1e-6);
  size_t stride = 23 * (c.D / 8); /* about 600 elements whatever the head */
  size_t n_fd = (N * W + stride - 1) / stride;
  float *got = tu_alloc(n_fd);
  double *want = tu_alloc_f64(n_fd);
  for (size_t k = 0; k < n_fd; k++) {
    got[k] = dqkv[k * stride];
    want[k] = tu_fd(ref_loss, &r, r.qkv, k * stride, 1e-5);
  }
  tu_check("attn tiled chunks dqkv vs finite differences", got, want, n_fd, 1e-4, 1e-5);
}

int main(void) {
  tu_start();
  tu_seed(11);
  /* The last two: heads of whole vectors past 8 rows, the CPU kernel's own tiled products
   * (strips of 16 rows, scores padded to 16 columns). */
  const struct attn_case cases[] = {
      {2, 7, 3, 12, 0, 10000, 0},  {2, 7, 3, 12, 1, 10000, 0}, {2, 7, 1, 6, 1, 100, 0},
      {2, 7, 1, 8, 0, 10000, 0},   {2, 1, 3, 12, 1, 10000, 0}, {2, 1, 1, 4, 0, 10000, 0},
      {3, 13, 3, 18, 1, 100, 5},   {2, 7, 3, 12, 0, 10000, 3}, {1, 21, 2, 64, 0, 10000, 0},
      {1, 40, 1, 16, 1, 10000, 3},
  };

  static const char *const ops[] = {"attention_fwd", "attention_bwd", NULL};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const struct attn_case *c = &cases[i];
    char what[96];
    snprintf(what, sizeof what, "attn B%zu T%zu H%zu D%zu rope %d pad %zu", c->B, c->T, c->H, c->D,
             c->rope, c->pad);
    tu_for_each_backend(what, ops, run_case, (void *)c);
  }
  static const char *const fwd[] = {"attention_fwd", NULL};
  tu_for_each_backend("attn rope convention", fwd, rope_convention_check, NULL);
  static const size_t chunk_heads[] = {8, 16};
  for (size_t i = 0; i < 2; i++) {
    char what[64];
    snprintf(what, sizeof what, "attn tiled chunks hd %zu", chunk_heads[i]);
    tu_for_each_backend(what, ops, tiled_chunks_check, (void *)&chunk_heads[i]);
  }
  return tu_finish();
}
