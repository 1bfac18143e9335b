/* Token + learned position embedding, forward and backward. */
#include <stdio.h>
#include <stdlib.h>

#include "codelets.h"

struct embed_args {
  unsigned seq_len;
  int has_wpe; /* 0 for RoPE models: no learned positions */
};

/* A token id outside the vocabulary would read or write another row's memory. */
static void check_token(int32_t token, unsigned vocab) {
  if (token < 0 || (unsigned)token >= vocab) {
    fprintf(stderr, "eellm: token id %d outside vocabulary of %u\n", (int)token, vocab);
    abort();
  }
}

/* tokens [N] int32, wte [V, D], wpe [C, D] (optional), out [N, D]. */
static void embed_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  int b = 0;
  const int32_t *tokens = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[b]);
  size_t n_rows = STARPU_VECTOR_GET_NX(buffers[b++]);
  const float *wte = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_wte = STARPU_MATRIX_GET_LD(buffers[b]);
  unsigned vocab = STARPU_MATRIX_GET_NY(buffers[b++]);
  const float *wpe = NULL;
  size_t ld_wpe = 0;
  if (args->has_wpe) {
    wpe = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
    ld_wpe = STARPU_MATRIX_GET_LD(buffers[b++]);
  }
  float *out = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_out = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t dim = STARPU_MATRIX_GET_NX(buffers[b]);

  for (size_t n = 0; n < n_rows; n++) {
    check_token(tokens[n], vocab);
    const float *tok_row = wte + (size_t)tokens[n] * ld_wte;
    float *out_row = out + n * ld_out;
    if (wpe) {
      const float *pos_row = wpe + (n % args->seq_len) * ld_wpe;
      for (size_t d = 0; d < dim; d++) out_row[d] = tok_row[d] + pos_row[d];
    } else {
      for (size_t d = 0; d < dim; d++) out_row[d] = tok_row[d];
    }
  }
}

/* tokens [N] int32, dout [N, D], dwte [V, D] (+=), dwpe [C, D] (+=, optional).
 * One task owns the gradients, so rows sharing a token simply add in turn. */
static void embed_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct embed_args *args = cl_arg;
  int b = 0;
  const int32_t *tokens = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[b]);
  size_t n_rows = STARPU_VECTOR_GET_NX(buffers[b++]);
  const float *dout = (const float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_dout = STARPU_MATRIX_GET_LD(buffers[b]);
  size_t dim = STARPU_MATRIX_GET_NX(buffers[b++]);
  float *dwte = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
  size_t ld_dwte = STARPU_MATRIX_GET_LD(buffers[b]);
  unsigned vocab = STARPU_MATRIX_GET_NY(buffers[b++]);
  float *dwpe = NULL;
  size_t ld_dwpe = 0;
  if (args->has_wpe) {
    dwpe = (float *)STARPU_MATRIX_GET_PTR(buffers[b]);
    ld_dwpe = STARPU_MATRIX_GET_LD(buffers[b]);
  }

  for (size_t n = 0; n < n_rows; n++) {
    check_token(tokens[n], vocab);
    const float *g = dout + n * ld_dout;
    float *tok_row = dwte + (size_t)tokens[n] * ld_dwte;
    for (size_t d = 0; d < dim; d++) tok_row[d] += g[d];
    if (dwpe) {
      float *pos_row = dwpe + (n % args->seq_len) * ld_dwpe;
      for (size_t d = 0; d < dim; d++) pos_row[d] += g[d];
    }
  }
}

static struct starpu_perfmodel embed_fwd_model = {.type = STARPU_HISTORY_BASED,
                                                  .symbol = "eellm_embed_fwd"};
static struct starpu_perfmodel embed_bwd_model = {.type = STARPU_HISTORY_BASED,
                                                  .symbol = "eellm_embed_bwd"};

static struct starpu_codelet embed_fwd_cl = {.cpu_funcs = {embed_fwd_cpu},
                                             .cpu_funcs_name = {"embed_fwd_cpu"},
                                             .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                             .model = &embed_fwd_model,
                                             .name = "embed_fwd"};
static struct starpu_codelet embed_bwd_cl = {.cpu_funcs = {embed_bwd_cpu},
                                             .cpu_funcs_name = {"embed_bwd_cpu"},
                                             .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                             .model = &embed_bwd_model,
                                             .name = "embed_bwd"};

void eellm_insert_embed_fwd(starpu_data_handle_t tokens, starpu_data_handle_t wte,
                            starpu_data_handle_t wpe, starpu_data_handle_t out, unsigned seq_len,
                            const struct eellm_task_info *info) {
  struct embed_args args = {.seq_len = seq_len, .has_wpe = wpe != NULL};
  struct starpu_data_descr buffers[4];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){wte, STARPU_R};
  if (wpe) buffers[n++] = (struct starpu_data_descr){wpe, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){out, STARPU_W};
  eellm_submit(&embed_fwd_cl, buffers, n, &args, sizeof args, info);
}

void eellm_insert_embed_bwd(starpu_data_handle_t tokens, starpu_data_handle_t dout,
                            starpu_data_handle_t dwte, starpu_data_handle_t dwpe, unsigned seq_len,
                            const struct eellm_task_info *info) {
  struct embed_args args = {.seq_len = seq_len, .has_wpe = dwpe != NULL};
  struct starpu_data_descr buffers[4];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){tokens, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dout, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dwte, STARPU_RW};
  if (dwpe) buffers[n++] = (struct starpu_data_descr){dwpe, STARPU_RW};
  eellm_submit(&embed_bwd_cl, buffers, n, &args, sizeof args, info);
}
