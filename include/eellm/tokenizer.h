/* Tokenizers: text <-> 16-bit token ids.
 *
 *   byte  ids 0..255 are the bytes, 256 is end-of-text; vocabulary 257.
 *   gpt2  GPT-2's byte-level BPE, read from encoder.json (token -> id) and
 *         vocab.bpe (merges by rank) in a directory; end-of-text is 50256
 *         ("<|endoftext|>"), vocabulary 50257.
 *
 * Encoding takes any byte string, invalid UTF-8 included, and decoding gives it
 * back: decode(encode(x)) == x. Text is plain text: "<|endoftext|>" inside it is
 * encoded as ordinary characters, never as the end-of-text id, which only the
 * caller inserts (between documents). Decoding writes the end-of-text id as the
 * literal "<|endoftext|>", with both tokenizers.
 *
 * A tokenizer holds scratch space and a cache of encoded words: use one per thread. */
#ifndef EELLM_TOKENIZER_H
#define EELLM_TOKENIZER_H

#include "eellm/api.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Tokenizer ids, as stored in token files. */
enum eellm_tokenizer_id { EELLM_TOKENIZER_BYTE = 0, EELLM_TOKENIZER_GPT2 = 1 };

/* Where the gpt2 files are when no directory is given and EELLM_TOKENIZER_DIR is unset. */
#define EELLM_TOKENIZER_DEFAULT_DIR "data/gpt2"

/* Growable arrays that encode and decode append to. Start from all zeros; free(v) when done. */
struct eellm_ids {
  uint16_t *v;
  size_t n, cap;
};
struct eellm_bytes {
  char *v;
  size_t n, cap;
};

/* Appends one id; 0, or -1 when out of memory. */
EELLM_API int eellm_ids_push(struct eellm_ids *ids, uint16_t id);

struct eellm_tokenizer;

/* kind: "byte" or "gpt2". dir: where gpt2's encoder.json and vocab.bpe are; NULL
 * means $EELLM_TOKENIZER_DIR, else data/gpt2 (relative to the working directory).
 * NULL with one line in err ("data/gpt2/encoder.json: cannot open: ..."). */
EELLM_API struct eellm_tokenizer *eellm_tokenizer_open(const char *kind, const char *dir, char *err,
                                                       size_t errlen);
EELLM_API void eellm_tokenizer_close(struct eellm_tokenizer *tok);

/* The directory the gpt2 tokenizer reads for dir (dir itself when not NULL). */
EELLM_API const char *eellm_tokenizer_dir(const char *dir);
/* "byte" or "gpt2" for a tokenizer id, NULL for an unknown one. */
EELLM_API const char *eellm_tokenizer_name(uint32_t id);

EELLM_API enum eellm_tokenizer_id eellm_tokenizer_id(const struct eellm_tokenizer *tok);
EELLM_API uint32_t eellm_tokenizer_vocab_size(const struct eellm_tokenizer *tok);
EELLM_API uint16_t eellm_tokenizer_eot_id(const struct eellm_tokenizer *tok);

/* Appends the ids of len bytes of text to ids. 0, or -1 when out of memory. */
EELLM_API int eellm_tokenizer_encode(struct eellm_tokenizer *tok, const char *text, size_t len,
                                     struct eellm_ids *ids);
/* Appends the bytes of n ids to text. 0, or -1 on an id outside the vocabulary
 * (nothing appended) or when out of memory. */
EELLM_API int eellm_tokenizer_decode(const struct eellm_tokenizer *tok, const uint16_t *ids,
                                     size_t n, struct eellm_bytes *text);

#ifdef __cplusplus
}
#endif
#endif
