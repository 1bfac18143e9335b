/* Token files: a corpus tokenized once (by `eellm tokenize`), read by training.
 *
 * Format, version 1, every integer little-endian:
 *
 *   offset  size  field
 *        0     8  magic "EELLMTOK"
 *        8     4  u32 format version: 1
 *       12     4  u32 tokenizer id: 0 byte, 1 gpt2 (enum eellm_tokenizer_id)
 *       16     4  u32 vocabulary size, 1..65536
 *       20     4  u32 end-of-text id, below the vocabulary size
 *       24     8  u64 token count N
 *       32    2N  u16 token ids, each below the vocabulary size
 *
 * The file is exactly 32 + 2N bytes. Documents are separated by the end-of-text
 * id: one between consecutive documents, none before the first or after the last.
 * A file with N = 0 is valid (an empty corpus). */
#ifndef EELLM_TOKENS_H
#define EELLM_TOKENS_H

#include "eellm/api.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EELLM_TOKENS_MAGIC "EELLMTOK"
#define EELLM_TOKENS_VERSION 1
#define EELLM_TOKENS_HEADER_SIZE 32

/* What the header says about the tokens. */
struct eellm_tokens_info {
  uint32_t tokenizer; /* enum eellm_tokenizer_id */
  uint32_t vocab_size;
  uint32_t eot_id;
};

/* A token file open for reading; the tokens are mapped, not copied. */
struct eellm_token_file {
  struct eellm_tokens_info info;
  uint64_t count;
  const uint16_t *tokens; /* count ids, each < info.vocab_size */
  void *map;              /* the whole file, map_size bytes */
  size_t map_size;
};

/* Opens and validates a token file: size, magic, version, header fields, and that
 * every id is below the vocabulary size. NULL with one line naming the file in err. */
EELLM_API struct eellm_token_file *eellm_tokens_open(const char *path, char *err, size_t errlen);
EELLM_API void eellm_tokens_close(struct eellm_token_file *file);

/* Writing. The tokens go to a temporary file next to path; commit writes the
 * header, fsyncs and renames it over path, so path holds either its old content or
 * the complete new file. Every function that fails leaves one line in err. */
struct eellm_tokens_writer;
EELLM_API struct eellm_tokens_writer *eellm_tokens_create(const char *path,
                                                          const struct eellm_tokens_info *info,
                                                          char *err, size_t errlen);
/* Appends ids; fails on an id outside the vocabulary (naming its position) or a write error. */
EELLM_API int eellm_tokens_append(struct eellm_tokens_writer *w, const uint16_t *ids, size_t n,
                                  char *err, size_t errlen);
EELLM_API uint64_t eellm_tokens_written(const struct eellm_tokens_writer *w);
/* Finishes the file and frees w, whether it succeeds (0) or not (-1). */
EELLM_API int eellm_tokens_commit(struct eellm_tokens_writer *w, char *err, size_t errlen);
/* Drops the file and frees w; path is untouched. */
EELLM_API void eellm_tokens_abort(struct eellm_tokens_writer *w);

#ifdef __cplusplus
}
#endif
#endif
