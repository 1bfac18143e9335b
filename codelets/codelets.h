/* eellm codelets: one StarPU codelet per op and direction, and a thin insert
 * wrapper per codelet so graph code reads like math.
 *
 * Where things live: the computation of each op is a plain C kernel in
 * codelets/cpu/<family>.c, declared in codelets/cpu/kernels.h (raw pointers,
 * leading dimensions, sizes; no StarPU; a CUDA twin would sit in codelets/cuda/).
 * codelets/<family>.c is the StarPU glue only: the codelet, its perf model,
 * the function that unpacks a task's buffers and calls the kernel, and the
 * eellm_insert_* wrapper declared here. codelets/glue.h holds what the glue
 * files share (scratch buffers for the kernels' work space among it);
 * codelets/types.h the plain types that kernels use too (norm and activation
 * kinds, the AdamW step, sampling settings and the token choice).
 *
 * Conventions (all tensors float32, row-major):
 * - A matrix [R, C] is a StarPU matrix handle with ny = R rows, nx = C columns,
 *   ld >= C. A vector [N] is a StarPU vector handle.
 * - Token ids and targets are int32 vectors. Loss masks are float vectors.
 * - Linear weights are stored [in, out] (GPT-2 / Hugging Face Conv1D layout):
 *   y = x @ W. With `transpose_w` the weight is [out, in] (lm_head, wte): y = x @ W^T.
 * - Backward codelets ACCUMULATE into parameter gradients (mode RW). For
 *   activation gradients a `beta_dx` argument says 0 = overwrite (mode W),
 *   1 = accumulate (mode RW).
 * - An optional tensor is passed as NULL.
 */
#ifndef EELLM_CODELETS_H
#define EELLM_CODELETS_H

#include <starpu.h>
#include <stdint.h>

#include "types.h" /* norm and activation kinds, AdamW step, sampling, token choice */

/* What a task is, for priorities now and traces later. */
enum eellm_task_kind {
  EELLM_KIND_FORWARD,
  EELLM_KIND_BACKWARD,
  EELLM_KIND_EXIT,
  EELLM_KIND_LOSS,
  EELLM_KIND_OPTIMIZER,
  EELLM_KIND_COLLECTIVE,
  EELLM_KIND_TRANSFER, /* data moved between ranks (StarPU-MPI), for traces */
  EELLM_KIND_OTHER,
  EELLM_N_KINDS
};

struct eellm_task_info {
  int priority;              /* StarPU priority; higher runs first under prio/lws/dmdas */
  int node;                  /* MPI rank that runs the task (its pipeline stage); 0 without MPI */
  enum eellm_task_kind kind;
  int micro;                 /* micro-batch index, -1 if none */
  int layer;                 /* layer index (0-based), -1 if none; exits use 1000 + exit index */
  uint32_t where;            /* 0: any architecture the codelet implements; else a mask of
                                STARPU_CPU, STARPU_CUDA that pins the task (the codelet tests
                                run every op on every backend this way) */
  int cpu_worker;            /* 0: the scheduler's choice; k > 0: StarPU's k-th CPU worker runs
                                the task (the blocks of a split task, one per worker) */
  double flops;              /* the task's model FLOPs, for traces: set by the eellm_insert_*
                                wrappers of the products and attention, 0 for the others */
};

/* Default info for tasks submitted outside a model graph (tests, tools). */
extern const struct eellm_task_info eellm_task_default;

/* The architectures (a mask of STARPU_CPU, STARPU_CUDA, ...) that the codelet
 * named `name` (a task name: "attention_fwd", "vector_set", ...) has
 * implementations for; 0 for no such codelet. */
uint32_t eellm_codelet_archs(const char *name);

/* From now on, tasks whose info->where is 0 run on the architectures of `where`
 * (a mask of STARPU_CPU, STARPU_CUDA) that their codelet implements, and on any
 * it implements when it has none of them; 0 (the default) lifts the preference.
 * tests/gpu_parity runs a whole training step on the CPU and then on the GPU
 * this way. Call it between submissions, not during them. */
void eellm_codelets_prefer(uint32_t where);

/* Waits for this process's tasks and unregisters the codelets' scratch
 * buffers; eellm_runtime_stop calls it before StarPU shuts down. */
void eellm_codelets_stop(void);

/* Submits `cl` on `n` buffers (cl->nbuffers is STARPU_VARIABLE_NBUFFERS, so
 * optional tensors are simply left out) with a malloc'd copy of `args`
 * (args_size bytes) as cl_arg: the kernel casts cl_arg to its argument struct.
 * Under MPI the task runs on rank info->node; the other ranks only take part
 * in its transfers, on an architecture that info->where allows. The single
 * place where eellm hands tasks to StarPU. Aborts the process with a message
 * naming the codelet if StarPU refuses the task or info->where asks for an
 * architecture the codelet has no implementation for. */
void eellm_submit(struct starpu_codelet *cl, struct starpu_data_descr *buffers, int n,
                  const void *args, size_t args_size, const struct eellm_task_info *info);

/* ---- embedding.c: token + learned position embedding ------------------- */
/* tokens [N] int32, wte [V, D], wpe [C, D] or NULL (RoPE models), out [N, D];
 * row n uses position n % seq_len. wte's rows are tokens vocab_lo .. vocab_lo +
 * V - 1 (a vocabulary-parallel part; 0 for the whole): other tokens' rows are
 * zero (+ wpe), for the parts' sum to make the embedding. */
void eellm_insert_embed_fwd(starpu_data_handle_t tokens, starpu_data_handle_t wte,
                            starpu_data_handle_t wpe, starpu_data_handle_t out,
                            unsigned seq_len, size_t vocab_lo, const struct eellm_task_info *info);
/* dwte [V, D] += scatter(dout) of the tokens wte's part holds, dwpe [C, D] +=
 * per-position sums (if non-NULL). */
void eellm_insert_embed_bwd(starpu_data_handle_t tokens, starpu_data_handle_t dout,
                            starpu_data_handle_t dwte, starpu_data_handle_t dwpe,
                            unsigned seq_len, size_t vocab_lo, const struct eellm_task_info *info);

/* ---- norm.c: layernorm and rmsnorm over the last dimension ------------- */
/* enum eellm_norm_kind (types.h): EELLM_LAYERNORM, EELLM_RMSNORM. */
/* x [N, D], gain [D], bias [D] or NULL, y [N, D] (W), stats [N, 2] (W): mean, 1/std
 * (rmsnorm: mean stored as 0). */
void eellm_insert_norm_fwd(starpu_data_handle_t x, starpu_data_handle_t gain,
                           starpu_data_handle_t bias, starpu_data_handle_t y,
                           starpu_data_handle_t stats, enum eellm_norm_kind kind, float eps,
                           const struct eellm_task_info *info);
/* dx (beta_dx), dgain += , dbias += (if non-NULL). */
void eellm_insert_norm_bwd(starpu_data_handle_t x, starpu_data_handle_t gain,
                           starpu_data_handle_t stats, starpu_data_handle_t dy,
                           starpu_data_handle_t dx, starpu_data_handle_t dgain,
                           starpu_data_handle_t dbias, enum eellm_norm_kind kind, int beta_dx,
                           const struct eellm_task_info *info);

/* ---- linear.c: y = x @ W (+ b) (+ residual) ----------------------------- */
/* x [N, K]; W [K, M] or, with transpose_w, [M, K]; b [M] or NULL;
 * residual [N, M] or NULL (added to the output); y [N, M] (W). A W of 2-byte
 * elements is bf16, used transposed with N <= EELLM_CPU_BF16_MAX_ROWS (on the CPUs:
 * eellm_cpu_linear_fwd_bf16). */
/* Whether a product of `rows` rows may run on a bf16 weight. */
int eellm_linear_bf16_fits(size_t rows);
void eellm_insert_linear_fwd(starpu_data_handle_t x, starpu_data_handle_t w,
                             starpu_data_handle_t b, starpu_data_handle_t residual,
                             starpu_data_handle_t y, int transpose_w,
                             const struct eellm_task_info *info);
/* dx = dy @ W^T (beta_dx; dx may be NULL: not wanted), dW += x^T @ dy (or dy^T @ x
 * when transposed; NULL: frozen), db += column sums of dy (if non-NULL). */
void eellm_insert_linear_bwd(starpu_data_handle_t x, starpu_data_handle_t w,
                             starpu_data_handle_t dy, starpu_data_handle_t dx,
                             starpu_data_handle_t dw, starpu_data_handle_t db, int transpose_w,
                             int beta_dx, const struct eellm_task_info *info);

/* ---- attention.c: causal multi-head self-attention ---------------------- */
/* qkv [N, 3D] (per row: q | k | v, head h in columns h*hd .. h*hd+hd-1 of each
 * third), N = B * seq_len; out [N, D] (W); lse [N, H] (W): log-sum-exp of each
 * query's scaled scores, kept for backward. rope != 0 rotates q and k
 * (rotate-half convention: pairs (i, i + hd/2), frequency theta^(-2i/hd)). */
void eellm_insert_attention_fwd(starpu_data_handle_t qkv, starpu_data_handle_t out,
                                starpu_data_handle_t lse, unsigned seq_len, unsigned n_heads,
                                int rope, float rope_theta, const struct eellm_task_info *info);
/* dqkv [N, 3D] (beta_dx). */
void eellm_insert_attention_bwd(starpu_data_handle_t qkv, starpu_data_handle_t lse,
                                starpu_data_handle_t dout, starpu_data_handle_t dqkv,
                                unsigned seq_len, unsigned n_heads, int rope, float rope_theta,
                                int beta_dx, const struct eellm_task_info *info);

/* ---- activation.c: MLP activations -------------------------------------- */
/* enum eellm_activation (types.h): EELLM_GELU, EELLM_SWIGLU. */
/* GELU (tanh approximation): h [N, F] -> a [N, F].
 * SwiGLU: h [N, 2F] = gate | up -> a [N, F] = silu(gate) * up. */
void eellm_insert_activation_fwd(starpu_data_handle_t h, starpu_data_handle_t a,
                                 enum eellm_activation act, const struct eellm_task_info *info);
/* dh (beta_dx) from h and da. */
void eellm_insert_activation_bwd(starpu_data_handle_t h, starpu_data_handle_t da,
                                 starpu_data_handle_t dh, enum eellm_activation act, int beta_dx,
                                 const struct eellm_task_info *info);

/* ---- tensor.c: zero, accumulate (residual and gradient sums), set ------- */
/* Works on matrix and vector handles of float. */
void eellm_insert_zero(starpu_data_handle_t t, const struct eellm_task_info *info);
/* dst += alpha * src (same shape). */
void eellm_insert_axpy(starpu_data_handle_t dst, starpu_data_handle_t src, float alpha,
                       const struct eellm_task_info *info);
/* dst = src (same shape and element size). */
void eellm_insert_copy(starpu_data_handle_t dst, starpu_data_handle_t src,
                       const struct eellm_task_info *info);
/* v [N] (W) = the N elements (of v's element size) at data, copied into the
 * task's argument at submission: host data enters the task graph where the task
 * runs, in order with its readers, and the caller may free or reuse data at
 * once (it writes an input without waiting for the tasks still reading v's
 * previous content). */
void eellm_insert_vector_set(starpu_data_handle_t v, const void *data,
                             const struct eellm_task_info *info);
/* m [R, C] (W) = the R * C elements at data, row after row, copied at
 * submission as for eellm_insert_vector_set. */
void eellm_insert_matrix_set(starpu_data_handle_t m, const void *data,
                             const struct eellm_task_info *info);
/* dst [R, C] (W; 2-byte elements) = src [R, C] rounded to bf16 (nearest, ties to even). */
void eellm_insert_to_bf16(starpu_data_handle_t dst, starpu_data_handle_t src,
                          const struct eellm_task_info *info);
/* t[i] (vectors or matrices, W) = the elements at data[i], for i < n <= EELLM_SET_MAX, in
 * one task: the inputs of a step enter the graph in one hand-over, not one each. */
#define EELLM_SET_MAX 4
void eellm_insert_tensors_set(const starpu_data_handle_t *t, const void *const *data, unsigned n,
                              const struct eellm_task_info *info);

/* ---- crossentropy.c: softmax cross-entropy with mask and temperature ---- */
/* logits [N, V], targets [N] int32, mask [N] float (0 or 1), stats [2] double (W):
 * stats[0] = sum over masked rows of c * -log softmax(logits / temperature)[target],
 * stats[1] = sum of the mask; c = 1, or with `dynamic` the row's confidence
 * max_j softmax(logits / temperature)_j (EE-LLM's dynamic exit-loss weight). */
void eellm_insert_xent_fwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                           starpu_data_handle_t mask, starpu_data_handle_t stats,
                           float temperature, int dynamic, const struct eellm_task_info *info);
/* The loss of a training step: stats (W) as eellm_insert_xent_fwd's, and
 * dlogits [N, V] (W) = scale * mask * c * (softmax(logits / T) - onehot) / (T * stats[1]):
 * the gradient of scale * (mean masked cross-entropy, weighted by c held
 * constant, as EE-LLM computes it under no_grad), zero when the mask is empty;
 * each row's softmax computed once. */
void eellm_insert_xent_fwd_bwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                               starpu_data_handle_t mask, starpu_data_handle_t stats,
                               starpu_data_handle_t dlogits, float scale, float temperature,
                               int dynamic, const struct eellm_task_info *info);

/* ---- crossentropy.c: vocabulary-parallel cross-entropy ----------------- */
/* Each tensor-parallel rank holds logits [N, V] of vocabulary rows vocab_lo ..
 * vocab_lo + V - 1. rowstats [N, 3] (W) = the part's row statistics at the
 * temperature: (max, sum of exp, target logit or 0); the ranks combine them
 * with eellm_insert_allreduce_softmax (collective.h). */
void eellm_insert_xent_part_stats(starpu_data_handle_t logits, starpu_data_handle_t targets,
                                  starpu_data_handle_t rowstats, size_t vocab_lo, float temperature,
                                  const struct eellm_task_info *info);
/* stats [2] double (W) as eellm_insert_xent_fwd's, from the combined rowstats. */
void eellm_insert_xent_stats_fwd(starpu_data_handle_t rowstats, starpu_data_handle_t mask,
                                 starpu_data_handle_t stats, int dynamic,
                                 const struct eellm_task_info *info);
/* dlogits [N, V] (W): the part's columns of eellm_insert_xent_fwd_bwd's gradient. */
void eellm_insert_xent_part_bwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                                starpu_data_handle_t mask, starpu_data_handle_t rowstats,
                                starpu_data_handle_t stats, starpu_data_handle_t dlogits,
                                size_t vocab_lo, float scale, float temperature, int dynamic,
                                const struct eellm_task_info *info);

/* ---- optimizer.c: global gradient norm and AdamW ------------------------ */
/* sumsq [1] double (W) = sum of squares of grad (matrix or vector). */
void eellm_insert_sumsq(starpu_data_handle_t grad, starpu_data_handle_t sumsq,
                        const struct eellm_task_info *info);
/* clip [2] float (W): clip[0] = sqrt(sum of all sumsq), clip[1] = gradient scale
 * min(1, max_norm / (norm + 1e-6)) (1 when max_norm <= 0; 0 when the norm is not a
 * finite float). Any number of sumsq handles. */
void eellm_insert_clip_scale(starpu_data_handle_t *sumsqs, int n, starpu_data_handle_t clip,
                             float max_norm, const struct eellm_task_info *info);
/* struct eellm_adamw_step (types.h): lr, beta1, beta2, eps, weight_decay, step (1-based).
 * g' = g * clip[1]; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 * p -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * p), with
 * mhat = m / (1 - b1^step), vhat = v / (1 - b2^step). clip may be NULL (scale 1).
 * When clip[0] (the norm) is not finite nothing changes: the step is skipped. */
void eellm_insert_adamw(starpu_data_handle_t param, starpu_data_handle_t grad,
                        starpu_data_handle_t m, starpu_data_handle_t v,
                        starpu_data_handle_t clip, const struct eellm_adamw_step *hp,
                        const struct eellm_task_info *info);

/* ---- kvcache.c: generation with key/value caches ------------------------ */
/* tokens [N] int32, positions [N] int32, wte [V, D], wpe [C, D] or NULL (RoPE
 * models), out [N, D] (W): row n = wte[tokens[n] - vocab_lo] (+ wpe[positions[n]]);
 * zero (+ wpe) for tokens outside wte's rows (as eellm_insert_embed_fwd). */
void eellm_insert_embed_at(starpu_data_handle_t tokens, starpu_data_handle_t positions,
                           starpu_data_handle_t wte, starpu_data_handle_t wpe,
                           starpu_data_handle_t out, size_t vocab_lo,
                           const struct eellm_task_info *info);
/* Causal attention of new rows over a key/value cache. qkv [N, 3D] as for
 * eellm_insert_attention_fwd; positions [N] and slots [N] int32 say where each row
 * is; cache [S * capacity, 2D] (RW): sequence slot s owns rows s * capacity ..
 * s * capacity + capacity - 1, row s * capacity + p holding position p's key
 * (RoPE-rotated at p when rope != 0) | value, heads laid out as in qkv. Every new
 * row's key and value are stored first; then row n attends to its slot's rows at
 * positions 0..positions[n], which must all be stored by then; out [N, D] (W). */
void eellm_insert_attention_cached(starpu_data_handle_t qkv, starpu_data_handle_t positions,
                                   starpu_data_handle_t slots, starpu_data_handle_t cache,
                                   starpu_data_handle_t out, unsigned capacity, unsigned n_heads,
                                   int rope, float rope_theta, const struct eellm_task_info *info);
/* A whole layer on cached-attention rows as one task, on CPU workers:
 * r [N, D] (W) = x + o(attention_cached(qkv(norm1(x)))), y [N, D] (W) = r +
 * proj(act(fc(norm2(r)))) for x [N, D], what the layer's separate norm, linear,
 * attention_cached and activation tasks compute. w: the layer's tensors by
 * enum eellm_layer_tensor (types.h; NULL where the model has none), products'
 * weights [k, m] not transposed; positions, slots, cache and capacity as for
 * eellm_insert_attention_cached. */
void eellm_insert_layer_cached(starpu_data_handle_t x,
                               const starpu_data_handle_t w[EELLM_LAYER_TENSORS],
                               starpu_data_handle_t positions, starpu_data_handle_t slots,
                               starpu_data_handle_t cache, starpu_data_handle_t r,
                               starpu_data_handle_t y, unsigned capacity,
                               const struct eellm_layer_kind *kind,
                               const struct eellm_task_info *info);
/* Whether a layer on `rows` rows is better run as one eellm_insert_layer_cached
 * task: no CUDA workers (its tensors would leave the GPU), none of its products
 * big enough for eellm_insert_linear_fwd to split across the CPU workers, and
 * EELLM_FUSE_DECODE in the environment not "0". */
int eellm_layer_cached_fuses(size_t rows, const starpu_data_handle_t w[EELLM_LAYER_TENSORS]);
/* src [N, D], index [M] int32, dst [M, D] (W): dst row m = src row index[m]. */
void eellm_insert_gather_rows(starpu_data_handle_t src, starpu_data_handle_t index,
                              starpu_data_handle_t dst, const struct eellm_task_info *info);

/* ---- sample.c: the next token and the confidence of an exit ------------- */
/* One row's outcome: `confidence` is of softmax(logits / exit_temperature): its
 * largest probability, or with entropy_rule 1 - entropy / log(V). `token` is the
 * argmax (greedy) or drawn from softmax(logits / (exit_temperature * temperature))
 * restricted to the top_k most likely tokens (0: all) and then to the smallest
 * set, most likely first, whose probability reaches top_p (>= 1 or <= 0: all),
 * renormalised: the first token, in id order (in order of decreasing logit, ties
 * by id, when top-k or top-p restrict), at which the cumulative probability
 * exceeds the row's uniform number. `logprob` is the token's log-probability
 * under the distribution it was drawn from (greedy: softmax(logits /
 * exit_temperature)). `raw_logprob` is log_softmax(logits)[token] and
 * `raw_maxprob` max softmax(logits), of the logits as they are (no exit
 * temperature, no sampling restriction). */
/* struct eellm_token_choice and struct eellm_sampling: types.h. */
/* logits [M, V], uniforms [M] float in [0, 1) (one draw per row; NULL when
 * greedy), limits [M] struct eellm_row_limit (each row's top_p and banned token;
 * NULL: the sampling's top_p, none banned), choices [M] (W): a vector of struct
 * eellm_token_choice. A row with a non-finite logit gets token -1 (no token can
 * come from it), confidence 0. The task is "next_token" when greedy without
 * limits (CPU or GPU), "next_token_sampled" otherwise (CPU only). */
void eellm_insert_next_token(starpu_data_handle_t logits, starpu_data_handle_t uniforms,
                             starpu_data_handle_t limits, starpu_data_handle_t choices,
                             const struct eellm_sampling *sampling,
                             const struct eellm_task_info *info);

#endif
