/* Token (+ learned position) embedding, forward and backward, on the GPU. */
#include <math.h>

#include "common.cuh"

/* One thread per output element; a row with an invalid position is NaN, one of
 * a token outside the part [vocab_lo, vocab_lo + vocab) zero (+ wpe). */
__global__ void embed_fwd_kernel(size_t n, size_t dim, const int32_t *tokens,
                                 const int32_t *positions, size_t seq_len, const float *wte,
                                 size_t ld_wte, size_t vocab_lo, size_t vocab, const float *wpe,
                                 size_t ld_wpe, size_t context, float *out, size_t ld_out) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * dim;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / dim, d = i % dim;
    size_t local = (size_t)tokens[r] - vocab_lo; /* huge below the part */
    size_t pos = positions ? (size_t)positions[r] : r % seq_len;
    float v = local < vocab ? wte[local * ld_wte + d] : 0.0f;
    if (wpe) v = pos < context ? v + wpe[pos * ld_wpe + d] : NAN; /* a negative position is huge */
    out[r * ld_out + d] = v;
  }
}

void eellm_cuda_embed_fwd(size_t n, size_t dim, const int32_t *tokens, const int32_t *positions,
                          size_t seq_len, const float *wte, size_t ld_wte, size_t vocab_lo,
                          size_t vocab, const float *wpe, size_t ld_wpe, size_t context,
                          float *out, size_t ld_out, cudaStream_t stream) {
  if (n * dim == 0) return;
  embed_fwd_kernel<<<eellm_blocks(n * dim), EELLM_BLOCK, 0, stream>>>(
      n, dim, tokens, positions, seq_len, wte, ld_wte, vocab_lo, vocab, wpe, ld_wpe, context, out,
      ld_out);
  eellm_check_launch("embed_fwd");
}

/* dwte row tokens[r] - vocab_lo += dout row r, by atomicAdd: sorting rows by
 * token for a deterministic segmented sum would cost more than the whole
 * scatter. Rows of tokens outside the part are left out. */
__global__ void embed_scatter_kernel(size_t n, size_t dim, const int32_t *tokens, const float *dout,
                                     size_t ld_dout, float *dwte, size_t ld_dwte, size_t vocab_lo,
                                     size_t vocab) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * dim;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / dim, d = i % dim;
    size_t local = (size_t)tokens[r] - vocab_lo;
    if (local < vocab) atomicAdd(&dwte[local * ld_dwte + d], dout[r * ld_dout + d]);
  }
}

/* dwpe row p += dout rows p, p + seq_len, ... in that order: one thread per
 * (position, column), so no two threads share an element. */
__global__ void embed_positions_kernel(size_t n, size_t dim, size_t seq_len, const float *dout,
                                       size_t ld_dout, float *dwpe, size_t ld_dwpe) {
  size_t n_pos = n < seq_len ? n : seq_len;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_pos * dim;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t p = i / dim, d = i % dim;
    float acc = dwpe[p * ld_dwpe + d];
    for (size_t r = p; r < n; r += seq_len) acc += dout[r * ld_dout + d];
    dwpe[p * ld_dwpe + d] = acc;
  }
}

void eellm_cuda_embed_bwd(size_t n, size_t dim, const int32_t *tokens, size_t seq_len,
                          const float *dout, size_t ld_dout, float *dwte, size_t ld_dwte,
                          size_t vocab_lo, size_t vocab, float *dwpe, size_t ld_dwpe,
                          cudaStream_t stream) {
  if (n * dim == 0) return;
  embed_scatter_kernel<<<eellm_blocks(n * dim), EELLM_BLOCK, 0, stream>>>(
      n, dim, tokens, dout, ld_dout, dwte, ld_dwte, vocab_lo, vocab);
  eellm_check_launch("embed_bwd (tokens)");
  if (!dwpe) return;
  embed_positions_kernel<<<eellm_blocks(dim * (n < seq_len ? n : seq_len)), EELLM_BLOCK, 0,
                           stream>>>(n, dim, seq_len, dout, ld_dout, dwpe, ld_dwpe);
  eellm_check_launch("embed_bwd (positions)");
}
