/* The byte tokenizer: ids 0..255 are the bytes, 256 is end-of-text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenize/tokenizer_impl.h"

#define EOT_TEXT "<|endoftext|>"

static int encode_bytes(struct eellm_tokenizer *tok, const char *text, size_t len,
                        struct eellm_ids *ids) {
  (void)tok;
  if (eellm_ids_reserve(ids, len) != 0) return -1;
  for (size_t i = 0; i < len; i++) ids->v[ids->n++] = (unsigned char)text[i];
  return 0;
}

struct eellm_tokenizer *eellm_byte_tokenizer_open(char *err, size_t errlen) {
  struct eellm_tokenizer *tok = calloc(1, sizeof *tok);
  if (tok) {
    tok->piece_at = malloc(258 * sizeof *tok->piece_at);
    tok->pieces = malloc(256 + strlen(EOT_TEXT));
  }
  if (!tok || !tok->piece_at || !tok->pieces) {
    snprintf(err, errlen, "byte tokenizer: out of memory");
    eellm_tokenizer_close(tok);
    return NULL;
  }
  tok->id = EELLM_TOKENIZER_BYTE;
  tok->vocab_size = 257;
  tok->eot_id = 256;
  tok->encode = encode_bytes;
  for (int b = 0; b < 256; b++) {
    tok->pieces[b] = (char)b;
    tok->piece_at[b] = (uint32_t)b;
  }
  memcpy(tok->pieces + 256, EOT_TEXT, strlen(EOT_TEXT));
  tok->piece_at[256] = 256;
  tok->piece_at[257] = 256 + (uint32_t)strlen(EOT_TEXT);
  return tok;
}
