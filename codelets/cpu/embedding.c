/* Token (+ learned position) embedding, forward and backward. */
#include <string.h>

#include "kernels.h"

void eellm_cpu_embed_fwd(size_t n, size_t dim, const int32_t *tokens, const int32_t *positions,
                         size_t seq_len, const float *wte, size_t ld_wte, size_t vocab,
                         const float *wpe, size_t ld_wpe, size_t context, float *out,
                         size_t ld_out) {
  for (size_t r = 0; r < n; r++) {
    eellm_cpu_check_index("embedding: token id", tokens[r], vocab);
    const float *tok_row = wte + (size_t)tokens[r] * ld_wte;
    float *out_row = out + r * ld_out;
    if (!wpe) {
      memcpy(out_row, tok_row, dim * sizeof *out_row);
      continue;
    }
    size_t pos = positions ? (size_t)positions[r] : r % seq_len;
    if (positions) eellm_cpu_check_index("embedding: position", positions[r], context);
    const float *pos_row = wpe + pos * ld_wpe;
    for (size_t d = 0; d < dim; d++) out_row[d] = tok_row[d] + pos_row[d];
  }
}

void eellm_cpu_embed_bwd(size_t n, size_t dim, const int32_t *tokens, size_t seq_len,
                         const float *dout, size_t ld_dout, float *dwte, size_t ld_dwte,
                         size_t vocab, float *dwpe, size_t ld_dwpe) {
  for (size_t r = 0; r < n; r++) {
    eellm_cpu_check_index("embedding: token id", tokens[r], vocab);
    const float *g = dout + r * ld_dout;
    float *tok_row = dwte + (size_t)tokens[r] * ld_dwte;
    for (size_t d = 0; d < dim; d++) tok_row[d] += g[d];
    if (dwpe) {
      float *pos_row = dwpe + (r % seq_len) * ld_dwpe;
      for (size_t d = 0; d < dim; d++) pos_row[d] += g[d];
    }
  }
}
