/* What the tokenizers share behind runtime/tokenizer.h. */
#ifndef EELLM_RUNTIME_TOKENIZER_IMPL_H
#define EELLM_RUNTIME_TOKENIZER_IMPL_H

#include "eellm/tokenizer.h"

struct eellm_tokenizer {
  enum eellm_tokenizer_id id;
  uint32_t vocab_size;
  uint16_t eot_id;
  /* Decoding table: token t is the bytes pieces[piece_at[t] .. piece_at[t + 1]). */
  uint32_t *piece_at; /* vocab_size + 1 offsets */
  char *pieces;
  /* Appends the ids of text; the byte tokenizer has no state. */
  int (*encode)(struct eellm_tokenizer *tok, const char *text, size_t len, struct eellm_ids *ids);
  void *state;
  void (*free_state)(void *state);
};

/* Makes room for extra more ids. 0, or -1 when out of memory. */
int eellm_ids_reserve(struct eellm_ids *ids, size_t extra);

struct eellm_tokenizer *eellm_byte_tokenizer_open(char *err, size_t errlen);
struct eellm_tokenizer *eellm_gpt2_tokenizer_open(const char *dir, char *err, size_t errlen);

#endif
