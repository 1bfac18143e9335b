/* CUDA against CPU (issue 11), where StarPU has CUDA workers:
 * - every codelet with a CUDA implementation, run on CUDA and on the CPU on the
 *   same inputs: each output's largest difference within 1e-4 of the CPU
 *   output's largest magnitude (fp32; tokens and exits equal);
 * - one AdamW training step of two small early-exit models (GPT- and
 *   Llama-style), CPU-only and with every task that has a CUDA implementation
 *   on the GPU, and wherever the scheduler puts each task: per-exit losses,
 *   gradient norm and every updated parameter within 1e-4 in the same sense;
 * - one greedy generation with early exits on each of two models, CPU-only and
 *   on the GPU: the same tokens and exits.
 * Without a CUDA worker (StarPU without CUDA, or no GPU) it says so in one line
 * and exits 77, which ctest reports as skipped. EELLM_TF32 must be unset: TF32
 * products are not fp32's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "eellm.h"
#include "eellm/generate.h"
#include "testutil.h"

#define REL_TOL 1e-4
#define SKIPPED 77

/* ---- one codelet case, run on each backend ------------------------------- */

/* The outputs a case records, as doubles (ints and floats widened). */
enum { MAX_OUTPUTS = 8 };
struct output {
  char what[96];
  double *values;
  size_t n;
  int exact; /* token ids: equal or not */
};
static struct output outputs[MAX_OUTPUTS];
static int n_outputs;

static void record(const char *what, double *values, size_t n, int exact) {
  if (n_outputs == MAX_OUTPUTS) {
    fprintf(stderr, "gpu_parity: more than %d outputs in a case\n", MAX_OUTPUTS);
    exit(1);
  }
  struct output *o = &outputs[n_outputs++];
  snprintf(o->what, sizeof o->what, "%s", what);
  o->values = values;
  o->n = n;
  o->exact = exact;
}

/* Floats of a [rows, cols] matrix with row stride ld (padding left out). */
static void record_floats(const char *what, const float *x, size_t rows, size_t cols, size_t ld) {
  double *v = tu_alloc_f64(rows * cols);
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) v[r * cols + c] = x[r * ld + c];
  record(what, v, rows * cols, 0);
}

static float *random_floats(size_t n, double lo, double hi) {
  float *x = tu_alloc(n);
  tu_fill(x, n, lo, hi);
  return x;
}

static int32_t *random_ids(size_t n, size_t below) {
  int32_t *ids = (int32_t *)tu_alloc(n); /* float-sized slots: 4 bytes each */
  for (size_t i = 0; i < n; i++) ids[i] = (int32_t)tu_uniform(0, (double)below);
  return ids;
}

/* Largest |got - want| against the largest |want| (0 allows no difference). */
static int close_enough(const struct output *got, const struct output *want, double *rel) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < want->n; i++) {
    double d = fabs(got->values[i] - want->values[i]);
    if (!(d <= diff)) diff = d; /* NaN sticks */
    scale = fmax(scale, fabs(want->values[i]));
  }
  *rel = scale > 0 ? diff / scale : diff;
  if (want->exact) return diff == 0;
  return diff <= REL_TOL * scale;
}

typedef void (*codelet_case)(const struct eellm_task_info *info);

/* Runs `run` on the CPU and on CUDA with the same inputs and compares what it records. */
static void parity(const char *name, codelet_case run) {
  struct eellm_task_info info = eellm_task_default;
  struct output cpu[MAX_OUTPUTS];
  info.where = STARPU_CPU;
  n_outputs = 0;
  tu_seed(42);
  run(&info);
  int n_cpu = n_outputs;
  memcpy(cpu, outputs, sizeof cpu);
  info.where = STARPU_CUDA;
  n_outputs = 0;
  tu_seed(42);
  run(&info);
  char what[256];
  snprintf(what, sizeof what, "%s: both backends record the same outputs", name);
  if (!tu_ok(n_outputs == n_cpu, what)) return;
  for (int i = 0; i < n_cpu; i++) {
    double rel;
    int ok = outputs[i].n == cpu[i].n && close_enough(&outputs[i], &cpu[i], &rel);
    printf("  %-56s rel. diff %.2e\n", cpu[i].what, ok ? rel : NAN);
    snprintf(what, sizeof what, "%.100s: %.90s (cuda vs cpu)", name, cpu[i].what);
    tu_ok(ok, what);
  }
}

/* ---- the codelets -------------------------------------------------------- */

enum { EV = 50, ED = 40, ET = 12, EN = 36, EC = 16 };

static void case_embedding(const struct eellm_task_info *ti) {
  int32_t *tokens = random_ids(EN, EV), *positions = random_ids(EN, EC);
  float *wte = random_floats(EV * ED, -1, 1), *wpe = random_floats(EC * ED, -1, 1);
  float *out = tu_alloc(EN * ED), *at = tu_alloc(EN * ED), *dout = random_floats(EN * ED, -1, 1);
  float *dwte = random_floats(EV * ED, -1, 1), *dwpe = random_floats(EC * ED, -1, 1);
  starpu_data_handle_t h_tokens = tu_vector_i32(tokens, EN), h_wte = tu_matrix(wte, EV, ED);
  starpu_data_handle_t h_wpe = tu_matrix(wpe, EC, ED);
  eellm_insert_embed_fwd(h_tokens, h_wte, h_wpe, tu_matrix(out, EN, ED), ET, 0, ti);
  eellm_insert_embed_at(h_tokens, tu_vector_i32(positions, EN), h_wte, h_wpe, tu_matrix(at, EN, ED),
                        0, ti);
  eellm_insert_embed_bwd(h_tokens, tu_matrix(dout, EN, ED), tu_matrix(dwte, EV, ED),
                         tu_matrix(dwpe, EC, ED), ET, 0, ti);
  tu_sync_all();
  record_floats("embed_fwd", out, EN, ED, ED);
  record_floats("embed_at", at, EN, ED, ED);
  record_floats("embed_bwd dwte", dwte, EV, ED, ED);
  record_floats("embed_bwd dwpe", dwpe, EC, ED, ED);
}

enum { NN = 70, ND = 300 }; /* more rows than column-sum chunks, a row wider than a block */

static void case_norm(const struct eellm_task_info *ti, enum eellm_norm_kind kind) {
  float *x = random_floats(NN * ND, -2, 3), *gain = random_floats(ND, 0.5, 1.5);
  float *bias = random_floats(ND, -0.5, 0.5), *y = tu_alloc(NN * ND), *stats = tu_alloc(NN * 2);
  float *dy = random_floats(NN * ND, -1, 1), *dx = random_floats(NN * ND, -1, 1);
  float *dgain = random_floats(ND, -1, 1), *dbias = random_floats(ND, -1, 1);
  int layernorm = kind == EELLM_LAYERNORM;
  starpu_data_handle_t h_x = tu_matrix(x, NN, ND), h_gain = tu_vector(gain, ND);
  starpu_data_handle_t h_stats = tu_matrix(stats, NN, 2);
  eellm_insert_norm_fwd(h_x, h_gain, layernorm ? tu_vector(bias, ND) : NULL, tu_matrix(y, NN, ND),
                        h_stats, kind, 1e-5f, ti);
  eellm_insert_norm_bwd(h_x, h_gain, h_stats, tu_matrix(dy, NN, ND), tu_matrix(dx, NN, ND),
                        tu_vector(dgain, ND), layernorm ? tu_vector(dbias, ND) : NULL, kind,
                        layernorm, ti);
  tu_sync_all();
  record_floats("norm_fwd y", y, NN, ND, ND);
  record_floats("norm_fwd stats", stats, NN, 2, 2);
  record_floats("norm_bwd dx", dx, NN, ND, ND);
  record_floats("norm_bwd dgain", dgain, 1, ND, ND);
  record_floats("norm_bwd dbias", dbias, 1, ND, ND);
}

static void case_layernorm(const struct eellm_task_info *ti) { case_norm(ti, EELLM_LAYERNORM); }
static void case_rmsnorm(const struct eellm_task_info *ti) { case_norm(ti, EELLM_RMSNORM); }

enum { LN = 37, LK = 50, LM = 45, LPAD = 3 };

/* x [LN, LK] padded; W [LK, LM] or, transposed, [LM, LK]. */
static void case_linear(const struct eellm_task_info *ti, int transpose_w) {
  float *x = random_floats(LN * (LK + LPAD), -1, 1), *w = random_floats(LK * LM, -1, 1);
  float *b = random_floats(LM, -1, 1), *res = random_floats(LN * LM, -1, 1);
  float *y = tu_alloc(LN * LM), *dy = random_floats(LN * LM, -1, 1);
  float *dx = random_floats(LN * LK, -1, 1), *dw = random_floats(LK * LM, -1, 1);
  float *db = random_floats(LM, -1, 1);
  size_t w_rows = transpose_w ? LM : LK, w_cols = transpose_w ? LK : LM;
  starpu_data_handle_t h_x = tu_matrix_ld(x, LN, LK, LK + LPAD), h_w = tu_matrix(w, w_rows, w_cols);
  eellm_insert_linear_fwd(h_x, h_w, transpose_w ? NULL : tu_vector(b, LM),
                          transpose_w ? NULL : tu_matrix(res, LN, LM), tu_matrix(y, LN, LM),
                          transpose_w, ti);
  eellm_insert_linear_bwd(h_x, h_w, tu_matrix(dy, LN, LM), tu_matrix(dx, LN, LK),
                          tu_matrix(dw, w_rows, w_cols), transpose_w ? NULL : tu_vector(db, LM),
                          transpose_w, !transpose_w, ti);
  tu_sync_all();
  record_floats("linear_fwd y", y, LN, LM, LM);
  record_floats("linear_bwd dx", dx, LN, LK, LK);
  record_floats("linear_bwd dw", dw, w_rows, w_cols, w_cols);
  record_floats("linear_bwd db", db, 1, LM, LM);
}

static void case_linear_plain(const struct eellm_task_info *ti) { case_linear(ti, 0); }
static void case_linear_transposed(const struct eellm_task_info *ti) { case_linear(ti, 1); }

enum { AN = 29, AF = 70 };

static void case_activation(const struct eellm_task_info *ti, enum eellm_activation act) {
  size_t h_cols = act == EELLM_SWIGLU ? 2 * AF : AF;
  float *h = random_floats(AN * h_cols, -4, 4), *a = tu_alloc(AN * AF);
  float *da = random_floats(AN * AF, -1, 1), *dh = random_floats(AN * h_cols, -1, 1);
  eellm_insert_activation_fwd(tu_matrix(h, AN, h_cols), tu_matrix(a, AN, AF), act, ti);
  eellm_insert_activation_bwd(tu_matrix(h, AN, h_cols), tu_matrix(da, AN, AF),
                              tu_matrix(dh, AN, h_cols), act, act == EELLM_GELU, ti);
  tu_sync_all();
  record_floats("activation_fwd", a, AN, AF, AF);
  record_floats("activation_bwd", dh, AN, h_cols, h_cols);
}

static void case_gelu(const struct eellm_task_info *ti) { case_activation(ti, EELLM_GELU); }
static void case_swiglu(const struct eellm_task_info *ti) { case_activation(ti, EELLM_SWIGLU); }

/* Two sequences of 33 rows (not a multiple of a block's rows). */
static void case_attention(const struct eellm_task_info *ti, size_t H, size_t hd, int rope) {
  enum { S = 2, T = 33 };
  size_t D = H * hd, N = S * T;
  float *qkv = random_floats(N * 3 * D, -1, 1), *out = tu_alloc(N * D), *lse = tu_alloc(N * H);
  float *dout = random_floats(N * D, -1, 1), *dqkv = random_floats(N * 3 * D, -1, 1);
  starpu_data_handle_t h_qkv = tu_matrix(qkv, N, 3 * D), h_lse = tu_matrix(lse, N, H);
  eellm_insert_attention_fwd(h_qkv, tu_matrix(out, N, D), h_lse, T, (unsigned)H, rope, 10000.0f,
                             ti);
  eellm_insert_attention_bwd(h_qkv, h_lse, tu_matrix(dout, N, D), tu_matrix(dqkv, N, 3 * D), T,
                             (unsigned)H, rope, 10000.0f, 1, ti);
  tu_sync_all();
  record_floats("attention_fwd out", out, N, D, D);
  record_floats("attention_fwd lse", lse, N, H, H);
  record_floats("attention_bwd dqkv", dqkv, N, 3 * D, 3 * D);
}

static void case_attention_small(const struct eellm_task_info *ti) { case_attention(ti, 3, 16, 0); }
/* 80 = 40 pairs: two pairs per lane, with RoPE. */
static void case_attention_rope(const struct eellm_task_info *ti) { case_attention(ti, 2, 80, 1); }

/* Slot 0: new rows at positions 3..6 over 3 cached ones; slot 1: positions 0..1. */
static void case_attention_cached(const struct eellm_task_info *ti) {
  enum { H = 2, HD = 24, D = H * HD, CAP = 20, SLOTS = 2, N = 6 };
  static const int32_t positions[N] = {3, 4, 5, 6, 0, 1}, slots[N] = {0, 0, 0, 0, 1, 1};
  int32_t pos[N], slot[N];
  memcpy(pos, positions, sizeof pos);
  memcpy(slot, slots, sizeof slot);
  float *qkv = random_floats(N * 3 * D, -1, 1), *out = tu_alloc(N * D);
  float *cache = random_floats(SLOTS * CAP * 2 * D, -1, 1);
  eellm_insert_attention_cached(tu_matrix(qkv, N, 3 * D), tu_vector_i32(pos, N),
                                tu_vector_i32(slot, N), tu_matrix(cache, SLOTS * CAP, 2 * D),
                                tu_matrix(out, N, D), CAP, H, 1, 10000.0f, ti);
  tu_sync_all();
  record_floats("attention_cached out", out, N, D, D);
  record_floats("attention_cached cache", cache, SLOTS * CAP, 2 * D, 2 * D);
}

enum { XN = 20, XV = 300 };

static void case_xent(const struct eellm_task_info *ti, int dynamic) {
  float *logits = random_floats(XN * XV, -5, 5), *mask = tu_alloc(XN), *dlogits = tu_alloc(XN * XV);
  int32_t *targets = random_ids(XN, XV);
  for (size_t r = 0; r < XN; r++) mask[r] = r % 4 == 3 ? 0.0f : 1.0f;
  double *stats = tu_alloc_f64(2);
  starpu_data_handle_t h_z = tu_matrix(logits, XN, XV), h_t = tu_vector_i32(targets, XN);
  starpu_data_handle_t h_mask = tu_vector(mask, XN), h_stats = tu_vector_f64(stats, 2);
  eellm_insert_xent_fwd(h_z, h_t, h_mask, h_stats, 1.3f, dynamic, ti);
  tu_sync_all();
  record("xent_fwd stats", stats, 2, 0);
  double *fused_stats = tu_alloc_f64(2);
  eellm_insert_xent_fwd_bwd(h_z, h_t, h_mask, tu_vector_f64(fused_stats, 2),
                            tu_matrix(dlogits, XN, XV), 0.7f, 1.3f, dynamic, ti);
  tu_sync_all();
  record("xent_fwd_bwd stats", fused_stats, 2, 0);
  record_floats("xent_fwd_bwd dlogits", dlogits, XN, XV, XV);
}

static void case_xent_plain(const struct eellm_task_info *ti) { case_xent(ti, 0); }
static void case_xent_dynamic(const struct eellm_task_info *ti) { case_xent(ti, 1); }

/* Three gradients (one padded), their clip scale, AdamW on the padded one. */
static void case_optimizer(const struct eellm_task_info *ti) {
  enum { R = 33, C = 70, PAD = 2 };
  float *g = random_floats(R * (C + PAD), -1, 1), *g2 = random_floats(500, -1, 1);
  float *g3 = random_floats(7, -1, 1), *clip = tu_alloc(2);
  float *p = random_floats(R * (C + PAD), -1, 1), *m = random_floats(R * C, -0.1, 0.1);
  float *v = random_floats(R * C, 0, 0.01);
  double *sumsq = tu_alloc_f64(3);
  starpu_data_handle_t sums[3] = {tu_vector_f64(sumsq, 1), tu_vector_f64(sumsq + 1, 1),
                                  tu_vector_f64(sumsq + 2, 1)};
  starpu_data_handle_t h_g = tu_matrix_ld(g, R, C, C + PAD), h_clip = tu_vector(clip, 2);
  eellm_insert_sumsq(h_g, sums[0], ti);
  eellm_insert_sumsq(tu_vector(g2, 500), sums[1], ti);
  eellm_insert_sumsq(tu_matrix(g3, 1, 7), sums[2], ti);
  eellm_insert_clip_scale(sums, 3, h_clip, 5.0f, ti);
  struct eellm_adamw_step hp = {
      .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-6f, .weight_decay = 0.1f, .step = 3};
  eellm_insert_adamw(tu_matrix_ld(p, R, C, C + PAD), h_g, tu_matrix(m, R, C), tu_matrix(v, R, C),
                     h_clip, &hp, ti);
  tu_sync_all();
  record("sumsq", sumsq, 3, 0);
  record_floats("clip_scale", clip, 1, 2, 2);
  record_floats("adamw p", p, R, C, C + PAD);
  record_floats("adamw m", m, R, C, C);
  record_floats("adamw v", v, R, C, C);
}

static void case_tensor(const struct eellm_task_info *ti) {
  enum { R = 9, C = 13, PAD = 3, GM = 5 };
  float *z = random_floats(R * (C + PAD), -1, 1), *dst = random_floats(R * C, -1, 1);
  float *src = random_floats(R * (C + PAD), -1, 1), *copy = tu_alloc(R * C);
  float *gathered = tu_alloc(GM * C);
  int32_t *index = random_ids(GM, R);
  starpu_data_handle_t h_src = tu_matrix_ld(src, R, C, C + PAD);
  eellm_insert_zero(tu_matrix_ld(z, R, C, C + PAD), ti);
  eellm_insert_axpy(tu_matrix(dst, R, C), h_src, -0.75f, ti);
  eellm_insert_copy(tu_matrix(copy, R, C), h_src, ti);
  eellm_insert_gather_rows(h_src, tu_vector_i32(index, GM), tu_matrix(gathered, GM, C), ti);
  tu_sync_all();
  record_floats("zero (padding kept)", z, R, C + PAD, C + PAD);
  record_floats("axpy", dst, R, C, C);
  record_floats("copy", copy, R, C, C);
  record_floats("gather_rows", gathered, GM, C, C);
}

static void case_next_token(const struct eellm_task_info *ti, int entropy_rule) {
  enum { M = 5, V = 300 };
  float *logits = random_floats(M * V, -3, 3);
  struct eellm_token_choice choices[M];
  starpu_data_handle_t h;
  starpu_vector_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)choices, M, sizeof *choices);
  struct eellm_sampling s = {.exit_temperature = 0.7f, .entropy_rule = entropy_rule, .top_p = 1};
  eellm_insert_next_token(tu_matrix(logits, M, V), NULL, NULL, h, &s, ti);
  starpu_data_unregister(h);
  tu_sync_all();
  double *tokens = tu_alloc_f64(M), *values = tu_alloc_f64(4 * M);
  for (size_t m = 0; m < M; m++) {
    tokens[m] = choices[m].token;
    double v[4] = {choices[m].confidence, choices[m].logprob, choices[m].raw_logprob,
                   choices[m].raw_maxprob};
    memcpy(values + 4 * m, v, sizeof v);
  }
  record("next_token tokens", tokens, M, 1);
  record("next_token confidence, logprobs, max prob", values, 4 * M, 0);
}

static void case_greedy_maxprob(const struct eellm_task_info *ti) { case_next_token(ti, 0); }
static void case_greedy_entropy(const struct eellm_task_info *ti) { case_next_token(ti, 1); }

/* Every codelet either has a CUDA implementation or is meant for the host. */
static void check_coverage(void) {
  static const char *const on_gpu[] = {"embed_fwd",
                                       "embed_bwd",
                                       "embed_at",
                                       "norm_fwd",
                                       "norm_bwd",
                                       "linear_fwd",
                                       "linear_bwd",
                                       "linear_dw",
                                       "activation_fwd",
                                       "activation_bwd",
                                       "attention_fwd",
                                       "attention_bwd",
                                       "attention_cached",
                                       "xent_fwd",
                                       "xent_fwd_bwd",
                                       "sumsq",
                                       "clip_scale",
                                       "adamw",
                                       "zero",
                                       "axpy",
                                       "copy",
                                       "gather_rows",
                                       "next_token",
                                       NULL};
  static const char *const on_host[] = {"vector_set",
                                        "next_token_sampled",
                                        "allreduce_sum",
                                        "bcast",
                                        "allreduce_softmax",
                                        "allgather_cols",
                                        "xent_part_stats",
                                        "xent_stats_fwd",
                                        "xent_part_bwd",
                                        "join_cols",
                                        "layer_cached",
                                        "layer_cached_helper",
                                        "linear_fwd_bf16",
                                        "to_bf16",
                                        NULL};
  char what[96];
  for (const char *const *op = on_gpu; *op; op++) {
    snprintf(what, sizeof what, "%s has a CUDA implementation", *op);
    tu_ok(eellm_codelet_archs(*op) & STARPU_CUDA, what);
  }
  for (const char *const *op = on_host; *op; op++) {
    snprintf(what, sizeof what, "%s runs on the host only", *op);
    tu_ok(eellm_codelet_archs(*op) == STARPU_CPU, what);
  }
}

/* ---- end to end ---------------------------------------------------------- */

/* Every output close to the CPU's as parity() judges them. */
static void compare_runs(const char *what, const struct output *cpu, const struct output *gpu) {
  double rel;
  int ok = cpu->n == gpu->n && close_enough(gpu, cpu, &rel);
  printf("  %-56s rel. diff %.2e\n", what, ok ? rel : NAN);
  tu_ok(ok, what);
}

/* Elements of model tensor i (a vector has 0 rows). */
static size_t tensor_size(const eellm_model *m, size_t i) {
  size_t rows, cols;
  eellm_model_tensor_shape(m, i, &rows, &cols);
  return (rows ? rows : 1) * cols;
}

/* One step of parity_train.train on a fresh model (seed 3), every task that can on
 * `where` (0: where the scheduler puts it): losses and gradient norm into
 * `losses`, the updated parameters in order into `params`. */
static void train_step(uint32_t where, const Eellm__Model *spec, const Eellm__Train *train,
                       struct output *losses, struct output *params) {
  char err[512];
  unsigned micro = train->micro_batches, batch = train->global_batch / micro;
  eellm_model *m = eellm_model_create(spec, batch, train->seq_len, err, sizeof err);
  if (!m) {
    fprintf(stderr, "gpu_parity: %s\n", err);
    exit(1);
  }
  eellm_model_init(m, 3);
  size_t rows = (size_t)micro * batch * train->seq_len;
  int32_t *tokens = random_ids(rows, spec->vocab_size),
          *targets = random_ids(rows, spec->vocab_size);
  eellm_codelets_prefer(where);
  eellm_model_submit_zero_grads(m);
  for (unsigned mi = 0; mi < micro; mi++) {
    struct eellm_batch b = {tokens + (size_t)mi * batch * train->seq_len,
                            targets + (size_t)mi * batch * train->seq_len, NULL};
    if (eellm_model_submit_forward_backward(m, &b, NULL, 1.0f / micro, err, sizeof err) != 0) {
      fprintf(stderr, "gpu_parity: %s\n", err);
      exit(1);
    }
  }
  eellm_model_submit_optimizer(m, train->optimizer, 1, eellm_train_spec_lr_at(train, 1));
  eellm_model_wait(m);
  eellm_codelets_prefer(0);
  unsigned n_exits = eellm_model_n_exits(m);
  losses->values = tu_alloc_f64(n_exits + 1);
  losses->n = n_exits + 1;
  for (unsigned k = 0; k < n_exits; k++) losses->values[k] = eellm_model_exit_loss(m, k);
  losses->values[n_exits] = eellm_model_grad_norm(m);
  eellm_model_sync(m);
  size_t n = 0;
  for (size_t i = 0; i < eellm_model_n_tensors(m); i++) n += tensor_size(m, i);
  params->values = tu_alloc_f64(n);
  params->n = n;
  size_t at = 0;
  for (size_t i = 0; i < eellm_model_n_tensors(m); i++) {
    const float *p = eellm_model_tensor_data(m, i);
    for (size_t j = 0; j < tensor_size(m, i); j++) params->values[at++] = p[j];
  }
  eellm_model_destroy(m);
}

/* The step of train spec parity_train.train on model spec `spec_path`. */
static void check_training_step(const char *spec_path) {
  char err[512], what[160];
  Eellm__Model *spec = eellm_model_spec_load(spec_path, err, sizeof err);
  Eellm__Train *train =
      spec ? eellm_train_spec_load("tests/specs/parity_train.train.txtpb", spec, err, sizeof err)
           : NULL;
  if (!tu_ok(spec && train, "training specs load")) {
    printf("%s\n", err);
    eellm_model_spec_free(spec);
    return;
  }
  /* CPU only, then every task that can on the GPU, then wherever the scheduler
   * puts them (CPU and CUDA workers side by side, data moving between them). */
  static const uint32_t runs[] = {STARPU_CPU, STARPU_CUDA, 0};
  static const char *const run_names[] = {"cpu", "cuda", "scheduler's choice"};
  struct output losses[3], params[3];
  memset(losses, 0, sizeof losses);
  memset(params, 0, sizeof params);
  for (int r = 0; r < 3; r++) {
    tu_seed(7);
    train_step(runs[r], spec, train, &losses[r], &params[r]);
  }
  for (int r = 1; r < 3; r++) {
    snprintf(what, sizeof what, "%s: training step on %s: exit losses and gradient norm", spec_path,
             run_names[r]);
    compare_runs(what, &losses[0], &losses[r]);
    snprintf(what, sizeof what, "%s: training step on %s: updated parameters", spec_path,
             run_names[r]);
    compare_runs(what, &params[0], &params[r]);
  }
  eellm_train_spec_free(train);
  eellm_model_spec_free(spec);
}

/* Greedy generation of 12 tokens with early exits from one prompt on `where`:
 * tokens and exit layers into out (exact). */
static void generate_on(uint32_t where, const char *ckpt, struct output *out) {
  char err[512];
  struct eellm_generator *g = eellm_generator_open(ckpt, NULL, 1, err, sizeof err);
  if (!g) {
    fprintf(stderr, "gpu_parity: %s\n", err);
    exit(1);
  }
  static const uint16_t prompt[] = {'T', 'h', 'e', ' ', 'c', 'a', 't'};
  const uint16_t *prompts[] = {prompt};
  size_t lens[] = {sizeof prompt / sizeof prompt[0]};
  struct eellm_gen_options o = {
      .max_tokens = 12, .use_early_exit = 1, .threshold = 0.2f, .top_p = 1};
  struct eellm_gen_sequence seq;
  eellm_codelets_prefer(where);
  int rc = eellm_generate(g, prompts, lens, 1, &o, &seq, err, sizeof err);
  eellm_codelets_prefer(0);
  if (rc != 0) {
    fprintf(stderr, "gpu_parity: eellm_generate: %s\n", err);
    exit(1);
  }
  out->values = tu_alloc_f64(2 * seq.n);
  out->n = 2 * seq.n;
  out->exact = 1;
  for (size_t i = 0; i < seq.n; i++) {
    out->values[2 * i] = seq.tokens[i];
    out->values[2 * i + 1] = seq.exit_layers[i];
  }
  eellm_gen_sequence_free(&seq);
  eellm_generator_close(g);
}

static void check_generation(const char *spec_path) {
  char err[512], ckpt[300], what[160];
  Eellm__Model *spec = eellm_model_spec_load(spec_path, err, sizeof err);
  eellm_model *m = spec ? eellm_model_create(spec, 1, spec->context_length, err, sizeof err) : NULL;
  if (!tu_ok(m != NULL, "generation model")) {
    printf("%s\n", err);
    eellm_model_spec_free(spec);
    return;
  }
  eellm_model_init(m, 11);
  eellm_model_set_tokenizer(m, "byte");
  snprintf(ckpt, sizeof ckpt, "%s/gen.safetensors", tu_tempdir());
  int saved = eellm_model_save(m, ckpt, err, sizeof err) == 0;
  eellm_model_destroy(m);
  eellm_model_spec_free(spec);
  if (!tu_ok(saved, "generation checkpoint")) {
    printf("%s\n", err);
    return;
  }
  struct output cpu = {0}, gpu = {0};
  generate_on(STARPU_CPU, ckpt, &cpu);
  generate_on(STARPU_CUDA, ckpt, &gpu);
  snprintf(what, sizeof what, "%s: the CPU's generation has tokens", spec_path);
  tu_ok(cpu.n > 0, what);
  snprintf(what, sizeof what, "%s: greedy generation: tokens and exits", spec_path);
  compare_runs(what, &cpu, &gpu);
}

int main(void) {
  tu_start();
  if (starpu_cuda_worker_get_count() == 0) {
    printf("gpu_parity: skipped: no CUDA worker (StarPU without CUDA, or no GPU)\n");
    eellm_runtime_stop();
    return SKIPPED;
  }
  check_coverage();
  static const struct {
    const char *name;
    codelet_case run;
  } cases[] = {
      {"embedding", case_embedding},
      {"layernorm", case_layernorm},
      {"rmsnorm", case_rmsnorm},
      {"linear", case_linear_plain},
      {"linear, transposed weight", case_linear_transposed},
      {"gelu", case_gelu},
      {"swiglu", case_swiglu},
      {"attention H=3 hd=16", case_attention_small},
      {"attention H=2 hd=80 RoPE", case_attention_rope},
      {"attention over a KV cache (RoPE)", case_attention_cached},
      {"cross-entropy", case_xent_plain},
      {"cross-entropy, dynamic weight", case_xent_dynamic},
      {"gradient norm, clip, AdamW", case_optimizer},
      {"zero, axpy, copy, gather", case_tensor},
      {"greedy next token, max prob", case_greedy_maxprob},
      {"greedy next token, entropy", case_greedy_entropy},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    printf("%s\n", cases[i].name);
    parity(cases[i].name, cases[i].run);
  }
  /* GPT-style (layernorm, GELU, learned positions) and Llama-style (rmsnorm,
   * SwiGLU, RoPE) models, exits of every structure between them. */
  check_training_step("tests/specs/parity_train.txtpb");
  check_training_step("tests/specs/parity_llama.txtpb");
  check_generation("tests/specs/gen_gpt.txtpb");
  check_generation("tests/specs/gen_llama.txtpb");
  return tu_finish();
}
