/* Token files (runtime/io/tokens.c): the 32-byte header and the ids.
 *
 * Oracles: a file that opens is 32 + 2 x count bytes with the header's fields
 * as read here (magic, version 1, a known tokenizer, vocabulary 1..65536,
 * end-of-text and every id below it), and writing its header and ids with the
 * writer gives the same bytes back; a refusal is one line. */
#include "fuzz.h"

#include "eellm/tokenizer.h"
#include "eellm/tokens.h"


static uint64_t le(const uint8_t *p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *out_path = fuzz_out_path("out.bin");
  const char *path = fuzz_memfile(data, size);
  if (!path) return 0;
  char err[512] = "";
  struct eellm_token_file *t = eellm_tokens_open(path, err, sizeof err);
  int valid = size >= 32 && memcmp(data, "EELLMTOK", 8) == 0 && le(data + 8, 4) == 1 &&
              eellm_tokenizer_name((uint32_t)le(data + 12, 4)) && le(data + 16, 4) >= 1 &&
              le(data + 16, 4) <= 65536 && le(data + 20, 4) < le(data + 16, 4) &&
              le(data + 24, 8) == (size - 32) / 2 && size % 2 == 0;
  for (size_t i = 32; valid && i + 1 < size; i += 2) valid = le(data + i, 2) < le(data + 16, 4);
  FUZZ_CHECK((t != NULL) == valid, "the reader %s a file the format %s: %s",
             t ? "accepts" : "refuses", valid ? "allows" : "forbids", t ? "" : err);
  if (!t) {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "error not one line: '%s'", err);
    return 0;
  }
  FUZZ_CHECK(t->map_size == size && t->count == (size - 32) / 2 &&
                 t->info.tokenizer == le(data + 12, 4) && t->info.vocab_size == le(data + 16, 4) &&
                 t->info.eot_id == le(data + 20, 4) &&
                 memcmp(t->tokens, data + 32, 2 * t->count) == 0,
             "the header as read differs from the bytes");

  /* The writer, given what was read, writes the same file. */
  struct eellm_tokens_writer *w = eellm_tokens_create(out_path, &t->info, err, sizeof err);
  FUZZ_CHECK(w, "the writer refuses the header of a valid file: %s", err);
  /* In two pieces, to cover appending. */
  size_t half = t->count / 2;
  FUZZ_CHECK(eellm_tokens_append(w, t->tokens, half, err, sizeof err) == 0 &&
                 eellm_tokens_append(w, t->tokens + half, t->count - half, err, sizeof err) == 0,
             "append: %s", err);
  FUZZ_CHECK(eellm_tokens_written(w) == t->count, "written count");
  FUZZ_CHECK(eellm_tokens_commit(w, err, sizeof err) == 0, "commit: %s", err);
  size_t n = 0;
  uint8_t *again = fuzz_slurp(out_path, &n);
  FUZZ_CHECK(again && n == size && memcmp(again, data, size) == 0,
             "the rewritten file differs (%zu bytes, not %zu)", n, size);
  free(again);
  eellm_tokens_close(t);
  return 0;
}
