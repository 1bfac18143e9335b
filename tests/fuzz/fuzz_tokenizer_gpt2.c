/* The GPT-2 tokenizer (runtime/tokenize/tokenizer_gpt2.c): pre-tokenizing with
 * PCRE2, BPE merges, the word cache, decoding.
 *
 * The vocabulary is a small one made here (the 256 bytes, <|endoftext|> and a
 * few dozen merges that overlap and chain, written as encoder.json and
 * vocab.bpe), so that the target needs no download; with EELLM_FUZZ_GPT2_DIR
 * set it uses the real files there instead (data/gpt2 after
 * scripts/fetch-tokenizer), without the reference comparison below.
 *
 * Oracles: decode(encode(x)) == x for any bytes (the tokenizer's promise), ids
 * below the vocabulary, encoding the same text again (from the cache) gives
 * the same ids, and with the small vocabulary the ids equal those of a plain
 * reimplementation of encoder.py's BPE here (lowest-ranked pair first, merged
 * everywhere left to right) over the same pre-tokens. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "fuzz.h"

#include <pcre2.h>

#include "eellm/tokenizer.h"

/* "LEFT RIGHT" merges by rank, in GPT-2's spelling (Ġ space, Ċ newline). */
static const char *const merges[] = {
    "t h",   "th e",  "Ġ the", "i n",    "in g",   "e r",   "Ġ a",   "a n",   "an d",
    "Ġ and", "o n",   "e e",   "ee e",   "a a",    "aa aa", "Ġ Ġ",   "ĠĠ ĠĠ", "Ċ Ċ",
    "Ã ©",   "a f",   "c af",  "caf Ã©", "Ġ cafÃ©", "1 2",   "12 3",  "' s",   "Ġ 1",
    "ä ¸",   "ä¸ Ń",  "x x",   "xx x",   "xxx x",  "b a",   "ba b",  "bab a",
};
#define N_MERGES (sizeof merges / sizeof merges[0])

static struct eellm_tokenizer *tok;
static int reference; /* compare with the plain BPE below */
static pcre2_code *pretokenizer;
static pcre2_match_data *match;
static char dir[300];

/* GPT-2's spelling of byte b as UTF-8 (as tokenizer_gpt2.c's byte_spellings). */
static void spell_byte(unsigned b, char out[3]) {
  unsigned cp = b, next = 0x100;
  int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
  if (!printable) {
    for (unsigned c = 0; c < b; c++)
      if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE)) next++;
    cp = next;
  }
  if (cp < 0x80) {
    out[0] = (char)cp, out[1] = 0;
  } else {
    out[0] = (char)(0xC0 | cp >> 6), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
  }
}

/* Token strings as bytes: the 256 bytes first, then each merge's result. */
static struct {
  char bytes[32];
  size_t len;
} vocab[1 + 256 + 3 * N_MERGES];
static size_t n_vocab;
static int merge_left[N_MERGES], merge_right[N_MERGES], merge_result[N_MERGES];

/* The id of a token spelled s (GPT-2 alphabet), adding it when new. */
static int spelled_id(const char *s, size_t len, FILE *json) {
  char bytes[32];
  size_t n = 0;
  for (size_t i = 0; i < len;) { /* invert the spelling */
    unsigned char c = (unsigned char)s[i];
    unsigned cp = c < 0x80 ? c : (unsigned)(c & 0x1F) << 6 | ((unsigned char)s[i + 1] & 0x3F);
    i += c < 0x80 ? 1 : 2;
    for (unsigned b = 0; b < 256; b++) {
      char sp[3];
      spell_byte(b, sp);
      const unsigned char *q = (const unsigned char *)sp;
      unsigned bcp = q[0] < 0x80 ? q[0] : (unsigned)(q[0] & 0x1F) << 6 | (q[1] & 0x3F);
      if (bcp == cp) {
        bytes[n++] = (char)b;
        break;
      }
    }
  }
  for (size_t id = 0; id < n_vocab; id++)
    if (vocab[id].len == n && memcmp(vocab[id].bytes, bytes, n) == 0) return (int)id;
  memcpy(vocab[n_vocab].bytes, bytes, n);
  vocab[n_vocab].len = n;
  fputs(", \"", json);
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '"' || s[i] == '\\') fputc('\\', json);
    fputc(s[i], json);
  }
  fprintf(json, "\": %zu", n_vocab);
  return (int)n_vocab++;
}

static void make_vocabulary(void) {
  snprintf(dir, sizeof dir, "%s", fuzz_tmpdir());
  char path[400];
  snprintf(path, sizeof path, "%s/encoder.json", dir);
  FILE *json = fopen(path, "w");
  snprintf(path, sizeof path, "%s/vocab.bpe", dir);
  FILE *bpe = fopen(path, "w");
  if (!json || !bpe) abort();
  fprintf(json, "{\"<|endoftext|>\": 0");
  n_vocab = 1; /* id 0 is end-of-text, then the bytes */
  for (unsigned b = 0; b < 256; b++) {
    char sp[3];
    spell_byte(b, sp);
    spelled_id(sp, strlen(sp), json);
  }
  fprintf(bpe, "#version: 0.2\n");
  for (size_t m = 0; m < N_MERGES; m++) {
    const char *space = strchr(merges[m], ' ');
    size_t ll = (size_t)(space - merges[m]), rl = strlen(space + 1);
    char joined[64];
    snprintf(joined, sizeof joined, "%.*s%s", (int)ll, merges[m], space + 1);
    merge_left[m] = spelled_id(merges[m], ll, json);
    merge_right[m] = spelled_id(space + 1, rl, json);
    merge_result[m] = spelled_id(joined, strlen(joined), json);
    fprintf(bpe, "%s\n", merges[m]);
  }
  fprintf(json, "}\n");
  fclose(json);
  fclose(bpe);
}

/* The files are read once, by eellm_tokenizer_open. */
static void remove_vocabulary(void) {
  char path[400];
  snprintf(path, sizeof path, "%s/encoder.json", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/vocab.bpe", dir);
  unlink(path);
  rmdir(dir);
}

static void cleanup(void) {
  eellm_tokenizer_close(tok);
  pcre2_match_data_free(match);
  pcre2_code_free(pretokenizer);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  const char *real = getenv("EELLM_FUZZ_GPT2_DIR");
  if (real && *real) {
    snprintf(dir, sizeof dir, "%s", real);
  } else {
    make_vocabulary();
    reference = 1;
  }
  char err[512];
  tok = eellm_tokenizer_open("gpt2", dir, err, sizeof err);
  if (reference) remove_vocabulary();
  if (!tok) {
    fprintf(stderr, "fuzz_tokenizer_gpt2: %s\n", err);
    abort();
  }
  int code;
  PCRE2_SIZE offset;
  pretokenizer = pcre2_compile(
      (PCRE2_SPTR) "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
      PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &offset, NULL);
  match = pcre2_match_data_create_from_pattern(pretokenizer, NULL);
  if (reference) { /* the merges are in use: " the" is one token, " café" one */
    struct eellm_ids ids = {0};
    eellm_tokenizer_encode(tok, " the caf\xc3\xa9", 10, &ids);
    FUZZ_CHECK(ids.n == 2, "the small vocabulary gives %zu ids for \" the caf\xc3\xa9\"", ids.n);
    free(ids.v);
  }
  atexit(cleanup);
  return 0;
}

/* encoder.py's bpe() on one pre-token, appending ids. */
static void reference_word(const unsigned char *w, size_t n, struct eellm_ids *out) {
  int *ids = malloc(n * sizeof *ids);
  size_t k = n;
  for (size_t i = 0; i < n; i++) ids[i] = (int)w[i] + 1;
  for (;;) {
    size_t best = N_MERGES;
    for (size_t i = 0; i + 1 < k; i++)
      for (size_t m = 0; m < best; m++)
        if (merge_left[m] == ids[i] && merge_right[m] == ids[i + 1]) best = m;
    if (best == N_MERGES) break;
    size_t o = 0;
    for (size_t i = 0; i < k; i++) {
      if (i + 1 < k && ids[i] == merge_left[best] && ids[i + 1] == merge_right[best]) {
        ids[o++] = merge_result[best];
        i++;
      } else {
        ids[o++] = ids[i];
      }
    }
    k = o;
  }
  for (size_t i = 0; i < k; i++) eellm_ids_push(out, (uint16_t)ids[i]);
  free(ids);
}

static void reference_encode(const char *text, size_t len, struct eellm_ids *out) {
  const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(match);
  size_t at = 0;
  while (at < len) {
    int rc = pcre2_match(pretokenizer, (PCRE2_SPTR)text, len, at, PCRE2_NOTEMPTY, match, NULL);
    FUZZ_CHECK(rc >= 0 || rc == PCRE2_ERROR_NOMATCH, "pcre2_match: %d", rc);
    size_t start = rc < 0 ? len : ov[0], end = rc < 0 ? len : ov[1];
    if (start > at) reference_word((const unsigned char *)text + at, start - at, out);
    if (end > start) reference_word((const unsigned char *)text + start, end - start, out);
    at = end;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!tok) LLVMFuzzerInitialize(NULL, NULL);
  const char *text = (const char *)data;
  struct eellm_ids ids = {0}, again = {0}, want = {0};
  FUZZ_CHECK(eellm_tokenizer_encode(tok, text, size, &ids) == 0, "encode failed");
  FUZZ_CHECK(size == 0 || ids.n > 0, "no ids for %zu bytes", size);
  FUZZ_CHECK(ids.n <= size, "%zu ids for %zu bytes", ids.n, size);
  for (size_t i = 0; i < ids.n; i++)
    FUZZ_CHECK(ids.v[i] < eellm_tokenizer_vocab_size(tok) && ids.v[i] != eellm_tokenizer_eot_id(tok),
               "id %u", ids.v[i]);
  struct eellm_bytes back = {0};
  FUZZ_CHECK(eellm_tokenizer_decode(tok, ids.v, ids.n, &back) == 0, "decode failed");
  FUZZ_CHECK(back.n == size && (size == 0 || memcmp(back.v, data, size) == 0),
             "decode(encode(x)) != x (%zu bytes, %zu back)", size, back.n);
  FUZZ_CHECK(eellm_tokenizer_encode(tok, text, size, &again) == 0, "encode failed");
  FUZZ_CHECK(again.n == ids.n && (ids.n == 0 || memcmp(again.v, ids.v, 2 * ids.n) == 0),
             "encoding again gives other ids");
  if (reference) {
    reference_encode(text, size, &want);
    FUZZ_CHECK(want.n == ids.n && (ids.n == 0 || memcmp(want.v, ids.v, 2 * ids.n) == 0),
               "%zu ids, the reference BPE gives %zu", ids.n, want.n);
  }
  free(ids.v);
  free(again.v);
  free(want.v);
  free(back.v);
  return 0;
}
