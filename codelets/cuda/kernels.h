/* eellm's CUDA kernels: the twins of codelets/cpu/kernels.h on device pointers,
 * with the same operands, layouts and semantics (see there), plus the CUDA
 * stream to launch on (and the cuBLAS handle, bound to that stream, for the
 * matrix products). No StarPU in here: the glue in codelets/<op>.c passes the
 * worker's stream and handle. Every function only enqueues work: none waits for
 * the device. C-includable (extern "C").
 *
 * Where the twins differ from the CPU kernels:
 * - An index outside its table (a token id, position, slot, row or target) does
 *   not abort (a kernel cannot): nothing is read or written out of bounds, the
 *   rows that would have used it come out NaN (embedding, gather, attention
 *   output, loss) or are left out (gradient scatters), and the non-finite checks
 *   downstream (the loss, the gradient norm, the next-token choice) catch it.
 * - The scatter of the token-embedding gradient adds with atomicAdd (rows that
 *   share a token add in an unspecified order, so its last bits vary from run to
 *   run); every other sum has a fixed order and gives the same bits every run.
 * - Kernels that need work space take `work`, of the size of the matching
 *   eellm_cuda_*_work_bytes (the glue's scratch is the larger of the CPU's and
 *   the GPU's needs). */
#ifndef EELLM_CUDA_KERNELS_H
#define EELLM_CUDA_KERNELS_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "../types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- embedding.cu -------------------------------------------------------- */

void eellm_cuda_embed_fwd(size_t n, size_t dim, const int32_t *tokens, const int32_t *positions,
                          size_t seq_len, const float *wte, size_t ld_wte, size_t vocab_lo,
                          size_t vocab,
                          const float *wpe, size_t ld_wpe, size_t context, float *out,
                          size_t ld_out, cudaStream_t stream);
/* dwpe's per-position sums run in row order (deterministic); dwte's scatter
 * uses atomicAdd. */
void eellm_cuda_embed_bwd(size_t n, size_t dim, const int32_t *tokens, size_t seq_len,
                          const float *dout, size_t ld_dout, float *dwte, size_t ld_dwte,
                          size_t vocab_lo, size_t vocab, float *dwpe, size_t ld_dwpe,
                          cudaStream_t stream);

/* ---- norm.cu ------------------------------------------------------------- */

void eellm_cuda_norm_fwd(size_t n, size_t dim, enum eellm_norm_kind kind, float eps, const float *x,
                         size_t ld_x, const float *gain, const float *bias, float *y, size_t ld_y,
                         float *stats, size_t ld_stats, cudaStream_t stream);
size_t eellm_cuda_norm_bwd_work_bytes(size_t n, size_t dim, int has_dgain, int has_dbias);
void eellm_cuda_norm_bwd(size_t n, size_t dim, enum eellm_norm_kind kind, int beta_dx,
                         const float *x, size_t ld_x, const float *gain, const float *stats,
                         size_t ld_stats, const float *dy, size_t ld_dy, float *dx, size_t ld_dx,
                         float *dgain, float *dbias, void *work, cudaStream_t stream);

/* ---- linear.cu ----------------------------------------------------------- */

/* cublasSgemm on `handle` (bound to `stream`); its math mode (fp32 or TF32) is
 * the glue's choice. */
void eellm_cuda_linear_fwd(size_t n, size_t k, size_t m, int transpose_w, const float *x,
                           size_t ld_x, const float *w, size_t ld_w, const float *b,
                           const float *res, size_t ld_res, float *y, size_t ld_y,
                           cudaStream_t stream, cublasHandle_t handle);
size_t eellm_cuda_linear_bwd_work_bytes(size_t n, size_t m, int has_db);
void eellm_cuda_linear_bwd(size_t n, size_t k, size_t m, int transpose_w, int beta_dx,
                           const float *x, size_t ld_x, const float *w, size_t ld_w,
                           const float *dy, size_t ld_dy, float *dx, size_t ld_dx, float *dw,
                           size_t ld_dw, float *db, void *work, cudaStream_t stream,
                           cublasHandle_t handle);
/* dst [cols] += column sums of a [rows, cols], summed in double in a fixed
 * order; work: eellm_cuda_column_sums_work_bytes(rows, cols). */
size_t eellm_cuda_column_sums_work_bytes(size_t rows, size_t cols);
void eellm_cuda_add_column_sums(size_t rows, size_t cols, const float *a, size_t ld_a, float *dst,
                                void *work, cudaStream_t stream);

/* ---- activation.cu ------------------------------------------------------- */

void eellm_cuda_activation_fwd(size_t n, size_t width, enum eellm_activation act, const float *h,
                               size_t ld_h, float *a, size_t ld_a, cudaStream_t stream);
void eellm_cuda_activation_bwd(size_t n, size_t width, enum eellm_activation act, int beta_dx,
                               const float *h, size_t ld_h, const float *da, size_t ld_da,
                               float *dh, size_t ld_dh, cudaStream_t stream);

/* ---- attention.cu: fused causal attention (online softmax; the T x T scores
 * are never stored) ------------------------------------------------------- */

/* The largest head size the CUDA attention kernels take (the glue keeps larger
 * heads on the CPU). */
#define EELLM_CUDA_MAX_HEAD_DIM 256

/* Work: the RoPE table and, in backward, one float per query row and head. */
size_t eellm_cuda_attention_work_bytes(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                                       int backward);
void eellm_cuda_attention_fwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                              float rope_theta, const float *qkv, size_t ld_qkv, float *out,
                              size_t ld_out, float *lse, size_t ld_lse, void *work,
                              cudaStream_t stream);
void eellm_cuda_attention_bwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                              float rope_theta, int beta_dx, const float *qkv, size_t ld_qkv,
                              const float *lse, size_t ld_lse, const float *dout, size_t ld_dout,
                              float *dqkv, size_t ld_dqkv, void *work, cudaStream_t stream);
/* No work space. Rows of one slot writing the same position race (the CPU
 * kernel keeps the last). */
void eellm_cuda_attention_cached(size_t n, size_t H, size_t hd, size_t capacity, size_t n_slots,
                                 int rope, float rope_theta, const float *qkv, size_t ld_qkv,
                                 const int32_t *positions, const int32_t *slots, float *cache,
                                 size_t ld_cache, float *out, size_t ld_out, cudaStream_t stream);

/* ---- crossentropy.cu ----------------------------------------------------- */

size_t eellm_cuda_xent_fwd_work_bytes(size_t n);
void eellm_cuda_xent_fwd(size_t n, size_t V, const float *logits, size_t ld, const int32_t *targets,
                         const float *mask, float temperature, int dynamic, double *stats,
                         void *work, cudaStream_t stream);
void eellm_cuda_xent_bwd(size_t n, size_t V, const float *logits, size_t ld, const int32_t *targets,
                         const float *mask, const double *stats, float scale, float temperature,
                         int dynamic, float *dlogits, size_t ld_d, cudaStream_t stream);

/* ---- optimizer.cu -------------------------------------------------------- */

size_t eellm_cuda_sumsq_work_bytes(void);
/* sumsq [1] (device) = the sum of squares of g, in double. */
void eellm_cuda_sumsq(size_t rows, size_t cols, const float *g, size_t ld, double *sumsq,
                      void *work, cudaStream_t stream);
/* clip [2] (device) from the n device scalars sumsqs[0 .. n-1] (the array itself
 * is in host memory), added in that order; work: one double. */
void eellm_cuda_clip_scale(size_t n, const double *const *sumsqs, float max_norm, float *clip,
                           void *work, cudaStream_t stream);
/* AdamW with the step's constants k (eellm_cpu_adamw_consts); the gradient scale
 * is clip[1] (1 when clip is NULL) and a non-finite clip[0] skips the step. */
void eellm_cuda_adamw(size_t rows, size_t cols, float *p, size_t ld_p, const float *g, size_t ld_g,
                      float *m, size_t ld_m, float *v, size_t ld_v,
                      const struct eellm_adamw_consts *k, const float *clip, cudaStream_t stream);

/* ---- sample.cu ----------------------------------------------------------- */

/* The greedy choice of each row (s->temperature is 0; sampling stays on the CPU). */
void eellm_cuda_next_token_greedy(size_t M, size_t V, const float *logits, size_t ld,
                                  const struct eellm_sampling *s,
                                  struct eellm_token_choice *choices, cudaStream_t stream);

/* ---- tensor.cu ----------------------------------------------------------- */

void eellm_cuda_zero(size_t rows, size_t cols, size_t elemsize, void *t, size_t ld,
                     cudaStream_t stream);
void eellm_cuda_copy(size_t rows, size_t cols, size_t elemsize, const void *src, size_t ld_src,
                     void *dst, size_t ld_dst, cudaStream_t stream);
void eellm_cuda_axpy(size_t rows, size_t cols, float alpha, const float *src, size_t ld_src,
                     float *dst, size_t ld_dst, cudaStream_t stream);
void eellm_cuda_gather_rows(size_t m, size_t dim, const float *src, size_t ld_src, size_t n_src,
                            const int32_t *index, float *dst, size_t ld_dst, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
