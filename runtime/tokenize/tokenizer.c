/* The tokenizer front: choosing a tokenizer, the id and byte buffers, decoding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenize/tokenizer_impl.h"

static const char *const names[] = {
    [EELLM_TOKENIZER_BYTE] = "byte", [EELLM_TOKENIZER_GPT2] = "gpt2"};

const char *eellm_tokenizer_name(uint32_t id) {
  return id < sizeof names / sizeof names[0] ? names[id] : NULL;
}

const char *eellm_tokenizer_dir(const char *dir) {
  if (dir) return dir;
  const char *env = getenv("EELLM_TOKENIZER_DIR");
  return env && *env ? env : EELLM_TOKENIZER_DEFAULT_DIR;
}

struct eellm_tokenizer *eellm_tokenizer_open(const char *kind, const char *dir, char *err,
                                             size_t errlen) {
  if (strcmp(kind, names[EELLM_TOKENIZER_BYTE]) == 0) return eellm_byte_tokenizer_open(err, errlen);
  if (strcmp(kind, names[EELLM_TOKENIZER_GPT2]) == 0)
    return eellm_gpt2_tokenizer_open(eellm_tokenizer_dir(dir), err, errlen);
  snprintf(err, errlen, "unknown tokenizer '%s' (byte or gpt2)", kind);
  return NULL;
}

void eellm_tokenizer_close(struct eellm_tokenizer *tok) {
  if (!tok) return;
  if (tok->free_state) tok->free_state(tok->state);
  free(tok->piece_at);
  free(tok->pieces);
  free(tok);
}

enum eellm_tokenizer_id eellm_tokenizer_id(const struct eellm_tokenizer *tok) { return tok->id; }
uint32_t eellm_tokenizer_vocab_size(const struct eellm_tokenizer *tok) { return tok->vocab_size; }
uint16_t eellm_tokenizer_eot_id(const struct eellm_tokenizer *tok) { return tok->eot_id; }

/* Grows *v (holding n elements of size each, room for *cap) to hold n + extra. */
static int grow(void **v, size_t *cap, size_t n, size_t extra, size_t size) {
  if (extra > SIZE_MAX / size - n) return -1;
  if (n + extra <= *cap) return 0;
  size_t want = *cap ? *cap : 256;
  while (want < n + extra) want = want > SIZE_MAX / size / 2 ? n + extra : 2 * want;
  void *p = realloc(*v, want * size);
  if (!p) return -1;
  *v = p;
  *cap = want;
  return 0;
}

int eellm_ids_reserve(struct eellm_ids *ids, size_t extra) {
  return grow((void **)&ids->v, &ids->cap, ids->n, extra, sizeof *ids->v);
}

int eellm_ids_push(struct eellm_ids *ids, uint16_t id) {
  if (eellm_ids_reserve(ids, 1) != 0) return -1;
  ids->v[ids->n++] = id;
  return 0;
}

int eellm_tokenizer_encode(struct eellm_tokenizer *tok, const char *text, size_t len,
                           struct eellm_ids *ids) {
  return tok->encode(tok, text, len, ids);
}

int eellm_tokenizer_decode(const struct eellm_tokenizer *tok, const uint16_t *ids, size_t n,
                           struct eellm_bytes *text) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] >= tok->vocab_size) return -1;
    total += tok->piece_at[ids[i] + 1] - tok->piece_at[ids[i]];
  }
  if (grow((void **)&text->v, &text->cap, text->n, total, 1) != 0) return -1;
  for (size_t i = 0; i < n; i++) {
    uint32_t at = tok->piece_at[ids[i]], len = tok->piece_at[ids[i] + 1] - at;
    memcpy(text->v + text->n, tok->pieces + at, len);
    text->n += len;
  }
  return 0;
}
