/* Token (+ learned position) embedding, forward and backward. */
#include <string.h>

#include "kernels.h"

void eellm_cpu_embed_fwd(size_t n, size_t dim, const int32_t *tokens, const int32_t *positions,
                         size_t seq_len, const float *wte, size_t ld_wte, size_t vocab_lo,
                         size_t vocab, const float *wpe, size_t ld_wpe, size_t context,
                         float *out, size_t ld_out) {
  for (size_t r = 0; r < n; r++) {
    size_t local = (size_t)tokens[r] - vocab_lo; /* huge below the part */
    const float *tok_row = local < vocab ? wte + local * ld_wte : NULL;
    float *out_row = out + r * ld_out;
    if (!wpe) {
      if (tok_row) memcpy(out_row, tok_row, dim * sizeof *out_row);
      else memset(out_row, 0, dim * sizeof *out_row);
      continue;
    }
    size_t pos = positions ? (size_t)positions[r] : r % seq_len;
    if (positions) eellm_cpu_check_index("embedding: position", positions[r], context);
    const float *pos_row = wpe + pos * ld_wpe;
    for (size_t d = 0; d < dim; d++) out_row[d] = (tok_row ? tok_row[d] : 0.0f) + pos_row[d];
  }
}

void eellm_cpu_embed_bwd(size_t n, size_t dim, const int32_t *tokens, size_t seq_len,
                         const float *dout, size_t ld_dout, float *dwte, size_t ld_dwte,
                         size_t vocab_lo, size_t vocab, float *dwpe, size_t ld_dwpe) {
  for (size_t r = 0; r < n; r++) {
    const float *g = dout + r * ld_dout;
    size_t local = (size_t)tokens[r] - vocab_lo;
    float *tok_row = dwte + local * ld_dwte;
    if (local < vocab)
      for (size_t d = 0; d < dim; d++) tok_row[d] += g[d];
    if (dwpe) {
      float *pos_row = dwpe + (r % seq_len) * ld_dwpe;
      for (size_t d = 0; d < dim; d++) pos_row[d] += g[d];
    }
  }
}
