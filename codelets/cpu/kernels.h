/* eellm's CPU kernels: the computation of every codelet as a plain C function
 * on raw pointers, leading dimensions (ld, in elements), sizes and scalar
 * parameters. No StarPU in here: the glue in codelets/<op>.c unpacks a task's
 * buffers and calls these. A CUDA twin (codelets/cuda/, prefix eellm_cuda_)
 * implements the same signatures on device pointers.
 *
 * Conventions: float32 row-major matrices [rows, cols] with row stride ld >=
 * cols; int32 token ids, positions and indices. A kernel allocates nothing:
 * what it needs beyond its operands is a `work` pointer the caller provides,
 * of the size the matching *_work_bytes function gives (the glue passes a
 * StarPU scratch buffer). Optional operands are NULL. beta_dx: 0 overwrites
 * the gradient (which may hold garbage, even NaN), 1 adds to it. Kernels abort
 * with a message on an index outside its table (a token id, a position, a row).
 */
#ifndef EELLM_CPU_KERNELS_H
#define EELLM_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../types.h"

/* ---- embedding.c --------------------------------------------------------- */

/* out [n, dim] = wte [vocab, dim] row tokens[r] - vocab_lo (+ wpe [context, dim]
 * row p(r)), p(r) = positions[r], or r % seq_len when positions is NULL. wpe
 * NULL: no learned positions (RoPE models). wte holds tokens [vocab_lo,
 * vocab_lo + vocab): other tokens are another tensor-parallel part's, their
 * rows zero (+ wpe). */
void eellm_cpu_embed_fwd(size_t n, size_t dim, const int32_t *tokens, const int32_t *positions,
                         size_t seq_len, const float *wte, size_t ld_wte, size_t vocab_lo,
                         size_t vocab,
                         const float *wpe, size_t ld_wpe, size_t context, float *out,
                         size_t ld_out);
/* dwte [vocab, dim] row tokens[r] - vocab_lo += dout [n, dim] row r (tokens of
 * the part only); dwpe [., dim] row r % seq_len += the same (if non-NULL). Rows
 * sharing a token add in turn. */
void eellm_cpu_embed_bwd(size_t n, size_t dim, const int32_t *tokens, size_t seq_len,
                         const float *dout, size_t ld_dout, float *dwte, size_t ld_dwte,
                         size_t vocab_lo, size_t vocab, float *dwpe, size_t ld_dwpe);

/* ---- norm.c -------------------------------------------------------------- */

/* x [n, dim], gain [dim], bias [dim] or NULL -> y [n, dim], stats [n, 2] = (mean,
 * 1/std) per row (rmsnorm: mean 0, 1/sqrt(mean(x^2) + eps)), the sums in double across blocks. */
void eellm_cpu_norm_fwd(size_t n, size_t dim, enum eellm_norm_kind kind, float eps,
                        const float *x, size_t ld_x, const float *gain, const float *bias,
                        float *y, size_t ld_y, float *stats, size_t ld_stats);
/* dx [n, dim] (beta_dx) from x, gain, stats [n, 2] and dy [n, dim];
 * dgain [dim] += sum_r dy * xhat, dbias [dim] += column sums of dy (each if
 * non-NULL), summed in double in `work`. */
size_t eellm_cpu_norm_bwd_work_bytes(size_t dim, int has_dgain, int has_dbias);
void eellm_cpu_norm_bwd(size_t n, size_t dim, enum eellm_norm_kind kind, int beta_dx,
                        const float *x, size_t ld_x, const float *gain, const float *stats,
                        size_t ld_stats, const float *dy, size_t ld_dy, float *dx, size_t ld_dx,
                        float *dgain, float *dbias, void *work);

/* ---- linear.c ------------------------------------------------------------ */

/* c [n, m] = alpha a [n, k] @ B + beta c; B is [k, m], or [m, k] used
 * transposed with transpose_b. One row (decoding) runs as a matrix-vector
 * product. */
void eellm_cpu_matmul(size_t n, size_t m, size_t k, int transpose_b, float alpha, const float *a,
                      size_t ld_a, const float *b, size_t ld_b, float beta, float *c, size_t ld_c);

/* y [n, m] = x [n, k] @ W (+ b [m]) (+ res [n, m]); W is [k, m], or [m, k] used
 * transposed with transpose_w. b, res may be NULL. */
void eellm_cpu_linear_fwd(size_t n, size_t k, size_t m, int transpose_w, const float *x,
                          size_t ld_x, const float *w, size_t ld_w, const float *b,
                          const float *res, size_t ld_res, float *y, size_t ld_y);
/* The same with w [m, k] in bf16 (the upper halves of floats), used transposed, for
 * 1 <= n <= EELLM_CPU_BF16_MAX_ROWS: the weights widened to floats (exactly), then
 * eellm_cpu_linear_fwd's thin dot products in fp32 (the compiler may fuse other
 * multiply-adds than in the float version: the last bits can differ from it). */
enum { EELLM_CPU_BF16_MAX_ROWS = 8 };
void eellm_cpu_linear_fwd_bf16(size_t n, size_t k, size_t m, const float *x, size_t ld_x,
                               const uint16_t *w, size_t ld_w, const float *b, const float *res,
                               size_t ld_res, float *y, size_t ld_y);
/* y [n] = x rounded to bf16 (to nearest, ties to even; NaN stays NaN). */
void eellm_cpu_to_bf16(size_t n, const float *x, uint16_t *y);
/* dx [n, k] = dy [n, m] @ W^T (beta_dx; NULL: not wanted); dW += x^T @ dy
 * (dy^T @ x with transpose_w; NULL: frozen); db [m] += column sums of dy
 * (NULL: no bias), summed in double in `work`. */
size_t eellm_cpu_linear_bwd_work_bytes(size_t m, int has_db);
void eellm_cpu_linear_bwd(size_t n, size_t k, size_t m, int transpose_w, int beta_dx,
                          const float *x, size_t ld_x, const float *w, size_t ld_w,
                          const float *dy, size_t ld_dy, float *dx, size_t ld_dx, float *dw,
                          size_t ld_dw, float *db, void *work);
/* dst [cols] += column sums of a [rows, cols], each summed in double in
 * sums [cols] (work). The bias gradients of linear and layernorm. */
void eellm_cpu_add_column_sums(size_t rows, size_t cols, const float *a, size_t ld_a, float *dst,
                               double *sums);

/* ---- activation.c -------------------------------------------------------- */

/* GELU (tanh approximation): h [n, width] -> a [n, width];
 * SwiGLU: h [n, 2 width] = gate | up -> a [n, width] = silu(gate) * up. */
void eellm_cpu_activation_fwd(size_t n, size_t width, enum eellm_activation act, const float *h,
                              size_t ld_h, float *a, size_t ld_a);
/* dh [n, width] (GELU) or [n, 2 width] = dgate | dup (SwiGLU), beta_dx, from h
 * and da [n, width]. */
void eellm_cpu_activation_bwd(size_t n, size_t width, enum eellm_activation act, int beta_dx,
                              const float *h, size_t ld_h, const float *da, size_t ld_da,
                              float *dh, size_t ld_dh);

/* ---- attention.c: RoPE, causal softmax, attention ----------------------- */

/* RoPE, Hugging Face "rotate half": pairs (i, i + hd/2), angle pos * theta^(-2i/hd).
 * cos_t, sin_t [n_pos, hd/2]: row p holds the angles of position pos0 + p. */
void eellm_cpu_rope_table(float *cos_t, float *sin_t, size_t pos0, size_t n_pos, size_t hd,
                          float theta);
/* y [n, hd] (ld_y) = x [n, hd] (ld_x) rotated, row r by table row r * ld_cs
 * (ld_cs = hd/2: one position per row; 0: every row at table row 0). */
void eellm_cpu_rope_rotate(size_t n, size_t hd, const float *x, size_t ld_x, float *y,
                           size_t ld_y, const float *cos_t, const float *sin_t, size_t ld_cs);
/* dx [n, hd] (ld_dx) = R^T dy [n, hd] (ld_dy), written or (accumulate) added:
 * the transpose of a rotation is the rotation by the opposite angle. */
void eellm_cpu_rope_unrotate(size_t n, size_t hd, const float *dy, size_t ld_dy, float *dx,
                             size_t ld_dx, int accumulate, const float *cos_t, const float *sin_t,
                             size_t ld_cs);
/* One head of causal attention for a block of query rows: row r of q [rows, hd]
 * meets keys 0 .. first_seen + r - 1 of k [keys, hd] (scores q k^T / sqrt(hd),
 * causal softmax, then out [rows, hd] = P v [keys, hd]), tiled (no [rows, keys]
 * matrix; keys no row sees are not read); lse [r * ld_lse] = the row's log-sum-exp
 * of its scores (lse may be NULL). work: eellm_cpu_attend_work_floats(rows, keys, hd)
 * floats (a strip's scores and a chunk of keys transposed). The training forward (a whole
 * sequence: first_seen 1) and the cached attention (new rows after first_seen - 1 cached
 * keys) both run this. */
size_t eellm_cpu_attend_work_floats(size_t rows, size_t keys, size_t hd);
void eellm_cpu_attend(size_t rows, size_t keys, size_t first_seen, size_t hd, const float *q,
                      size_t ld_q, const float *k, size_t ld_k, const float *v, size_t ld_v,
                      float *out, size_t ld_out, float *work, float *lse, size_t ld_lse);

/* Causal multi-head self-attention on packed qkv [n_seq * T, 3D] (per row
 * q | k | v, head h in columns h*hd .. h*hd+hd-1 of each third, D = H * hd);
 * out [n_seq * T, D]; lse [n_seq * T, H], kept for backward; rope != 0 rotates
 * q and k at positions 0 .. T-1 of each sequence (hd even). */
size_t eellm_cpu_attention_work_bytes(size_t T, size_t hd, int rope, int backward);
void eellm_cpu_attention_fwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                             float rope_theta, const float *qkv, size_t ld_qkv, float *out,
                             size_t ld_out, float *lse, size_t ld_lse, void *work);
/* dqkv [n_seq * T, 3D] (beta_dx) from qkv, lse and dout [n_seq * T, D]. */
void eellm_cpu_attention_bwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                             float rope_theta, int beta_dx, const float *qkv, size_t ld_qkv,
                             const float *lse, size_t ld_lse, const float *dout, size_t ld_dout,
                             float *dqkv, size_t ld_dqkv, void *work);

/* Causal attention of n new rows over a key/value cache: qkv [n, 3D] as above;
 * positions [n] and slots [n] say where each row is; cache [n_slots * capacity,
 * 2D]: row s * capacity + p holds position p's key (RoPE-rotated at p when
 * rope != 0) | value. Every new row's key and value are stored first; then row
 * r attends to its slot's positions 0 .. positions[r]; out [n, D]. */
size_t eellm_cpu_attention_cached_work_bytes(size_t n, size_t hd, size_t capacity);
void eellm_cpu_attention_cached(size_t n, size_t H, size_t hd, size_t capacity, size_t n_slots,
                                int rope, float rope_theta, const float *qkv, size_t ld_qkv,
                                const int32_t *positions, const int32_t *slots, float *cache,
                                size_t ld_cache, float *out, size_t ld_out, void *work);

/* ---- layer.c: a whole layer on cached-attention rows ------------------- */

/* A layer's sizes: model width d, kind.heads x hd attention columns, fc
 * columns of the first MLP product (ffn, or 2 ffn for SwiGLU), ffn activation
 * columns; the cache's capacity per slot and its slots. */
struct eellm_cpu_layer_shape {
  size_t d, hd, fc, ffn, capacity, n_slots;
  struct eellm_layer_kind kind;
};
/* Its tensors by enum eellm_layer_tensor (NULL: the model has none, as a bias),
 * products' weights W [k, m] row-major, not transposed, each with its ld. */
struct eellm_cpu_layer_weights {
  const float *t[EELLM_LAYER_TENSORS];
  size_t ld[EELLM_LAYER_TENSORS];
};
/* r [n, d] = x + o(attention_cached(qkv(norm1(x)))) and y [n, d] = r +
 * proj(act(fc(norm2(r)))) for x [n, d]: what the layer's norm, linear,
 * attention_cached and activation tasks compute, in one call (positions,
 * slots, cache as eellm_cpu_attention_cached). */
struct eellm_cpu_layer_call {
  size_t n;
  const struct eellm_cpu_layer_shape *s;
  const struct eellm_cpu_layer_weights *w;
  const float *x;
  size_t ld_x;
  const int32_t *positions, *slots;
  float *cache;
  size_t ld_cache;
  float *r;
  size_t ld_r;
  float *y;
  size_t ld_y;
  void *work; /* eellm_cpu_layer_cached_work_bytes */
};
size_t eellm_cpu_layer_cached_work_bytes(size_t n, const struct eellm_cpu_layer_shape *s);
void eellm_cpu_layer_cached(const struct eellm_cpu_layer_call *c);
/* The same as EELLM_LAYER_STEPS steps in order, step i in eellm_cpu_layer_step_parts(i)
 * parts (1, or 2 for a product: column halves) that may run at once on different cores,
 * each step's after all of the step before. Every part gives the same bits whoever
 * runs it, and the whole the same as eellm_cpu_layer_cached. */
enum { EELLM_LAYER_STEPS = 8 };
unsigned eellm_cpu_layer_step_parts(unsigned step);
void eellm_cpu_layer_step(const struct eellm_cpu_layer_call *c, unsigned step, unsigned part);

/* ---- crossentropy.c ------------------------------------------------------ */

/* logits [n, V], targets [n], mask [n] (0 or 1) -> stats [2] double:
 * sum over masked rows of c * -log softmax(logits / temperature)[target], mask
 * sum; c = 1, or with `dynamic` the row's confidence max_j softmax(logits / T)_j. */
void eellm_cpu_xent_fwd(size_t n, size_t V, const float *logits, size_t ld,
                        const int32_t *targets, const float *mask, float temperature,
                        int dynamic, double *stats);
/* stats [2] as eellm_cpu_xent_fwd, and dlogits [n, V] = scale * mask * c *
 * (softmax(logits / T) - onehot) / (T * stats[1]), c as above, a constant (not
 * differentiated); zero rows where the mask or stats[1] is 0. Each row's softmax
 * is computed once. */
void eellm_cpu_xent_fwd_bwd(size_t n, size_t V, const float *logits, size_t ld,
                            const int32_t *targets, const float *mask, float scale,
                            float temperature, int dynamic, double *stats, float *dlogits,
                            size_t ld_d);

/* vocabulary-parallel cross-entropy (crossentropy.c) */

/* rowstats [n, 3] = per row of logits [n, V], tokens [vocab_lo, vocab_lo + V)
 * of the vocabulary, scaled by 1 / temperature: (max, sum of exp(u - max),
 * u_target or 0 when the target is not in the part). */
void eellm_cpu_xent_part_stats(size_t n, size_t V, const float *logits, size_t ld,
                               const int32_t *targets, size_t vocab_lo, float temperature,
                               float *rowstats);
/* into [n, 3] = the statistics of the union of the parts of into and from. */
void eellm_cpu_softmax_stats_combine(float *into, const float *from, size_t n);
/* stats [2] as eellm_cpu_xent_fwd, from the whole rows' statistics. */
void eellm_cpu_xent_stats_fwd(size_t n, const float *rowstats, const float *mask, int dynamic,
                              double *stats);
/* dlogits [n, V] (overwritten) = the part's columns of eellm_cpu_xent_fwd_bwd's
 * gradient, from the whole rows' statistics. */
void eellm_cpu_xent_part_bwd(size_t n, size_t V, const float *logits, size_t ld,
                             const int32_t *targets, size_t vocab_lo, const float *mask,
                             const float *rowstats, const double *stats, float scale,
                             float temperature, int dynamic, float *dlogits, size_t ld_d);

/* ---- optimizer.c --------------------------------------------------------- */

/* Sum of squares of g [rows, cols]: float partial sums of EELLM_SUM_BLOCK squares, in double. */
double eellm_cpu_sumsq(size_t rows, size_t cols, const float *g, size_t ld);
/* clip [2] = (sqrt(total), min(1, max_norm / (norm + 1e-6))); scale 1 when max_norm <= 0,
 * 0 when the norm is not a finite float (a step to skip: see eellm_insert_adamw). */
void eellm_cpu_clip_scale(double total_sumsq, float max_norm, float *clip);
/* The constants of AdamW step hp (struct eellm_adamw_consts, types.h). */
struct eellm_adamw_consts eellm_cpu_adamw_consts(const struct eellm_adamw_step *hp);
/* AdamW (torch.optim.AdamW) on p, g, m, v [rows, cols], each with its own ld;
 * g is scaled by grad_scale first (the clip scale, or 1). */
void eellm_cpu_adamw(size_t rows, size_t cols, float *p, size_t ld_p, const float *g,
                     size_t ld_g, float *m, size_t ld_m, float *v, size_t ld_v,
                     const struct eellm_adamw_step *hp, float grad_scale);

/* ---- sample.c ------------------------------------------------------------ */

/* logits [M, V], uniforms [M] in [0, 1) (NULL: greedy), limits [M] (NULL: none)
 * -> choices [M], as eellm_insert_next_token documents. work: the bytes
 * eellm_cpu_next_token_work_bytes gives (0 when greedy without limits). */
size_t eellm_cpu_next_token_work_bytes(size_t V, int sampling, int limited);
void eellm_cpu_next_token(size_t M, size_t V, const float *logits, size_t ld, const float *uniforms,
                          const struct eellm_row_limit *limits, const struct eellm_sampling *s,
                          struct eellm_token_choice *choices, void *work);

/* softmax(z * inv_t) of a row z [V], in double: the argmax (the first largest
 * logit), the largest probability, 1 - entropy / log V (the two exit rules'
 * confidences) and log_sum, with which token t's log-probability is
 * (z[t] - z[argmax]) * inv_t - log_sum. */
struct eellm_softmax_stats {
  size_t argmax;
  double maxprob, entropy_conf, log_sum;
};
struct eellm_softmax_stats eellm_cpu_softmax_stats(const float *z, size_t V, double inv_t);

/* The distribution eellm_cpu_next_token samples a row z [V] from under limit
 * (NULL: none): probs [V] (0 off the top-k / top-p set and at a banned token);
 * work: eellm_cpu_next_token_work_bytes(V, 1, 1). */
void eellm_cpu_sampling_probs(const float *z, size_t V, const struct eellm_sampling *s,
                              const struct eellm_row_limit *limit, void *work, double *probs);

/* ---- tensor.c: whole-tensor helpers, any element size ------------------- */

/* t [rows, cols] of elemsize-byte elements, ld in elements: zero (padding kept). */
void eellm_cpu_zero(size_t rows, size_t cols, size_t elemsize, void *t, size_t ld);
/* dst [rows, cols] = src [rows, cols], elemsize-byte elements. */
void eellm_cpu_copy(size_t rows, size_t cols, size_t elemsize, const void *src, size_t ld_src,
                    void *dst, size_t ld_dst);
/* dst [rows, cols] += alpha * src [rows, cols], floats. */
void eellm_cpu_axpy(size_t rows, size_t cols, float alpha, const float *src, size_t ld_src,
                    float *dst, size_t ld_dst);
/* dst [m, dim] row r = src [n_src, dim] row index[r]. */
void eellm_cpu_gather_rows(size_t m, size_t dim, const float *src, size_t ld_src, size_t n_src,
                           const int32_t *index, float *dst, size_t ld_dst);

/* Aborts with "eellm: <what> <i> outside 0..<n-1>" unless 0 <= i < n. */
void eellm_cpu_check_index(const char *what, int32_t i, size_t n);

#endif
