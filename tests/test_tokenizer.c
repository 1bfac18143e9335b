/* Tokenizers and token files.
 *
 * byte: ids, round trips. gpt2: known GPT-2 encodings; ids equal to an independent
 * Python implementation (tests/gpt2_reference.py) on many strings (accents, CJK,
 * emoji, white space runs, digits, contractions, punctuation, newlines, empty);
 * decode(encode(x)) == x on every string and on random bytes, invalid UTF-8
 * included; a long word encodes fast; bad tokenizer files get one line naming
 * them. Token files: round trips and every validation error.
 *
 * Needs only libc, PCRE2 and jansson (no StarPU); runs from the source root and
 * fetches data/gpt2 with scripts/fetch-tokenizer when it is missing. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "eellm/tokenizer.h"
#include "eellm/tokens.h"
#include "runtime/engine/splitmix.h"

#define GPT2_DIR "data/gpt2"

static int passed, failed;

/* Records a check; on failure prints the formatted reason. Returns cond. */
static int check(int cond, const char *fmt, ...) {
  if (cond) {
    passed++;
    return 1;
  }
  va_list ap;
  va_start(ap, fmt);
  printf("FAIL ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  failed++;
  return 0;
}

static uint64_t rng_state = 12345;
static uint64_t next_random(void) { return eellm_splitmix64_next(&rng_state); }

static char tmp_dir[] = "/tmp/eellm-test-tokenizer-XXXXXX";

static const char *tmp_path(const char *name) {
  static char path[8][256];
  static int next;
  char *p = path[next++ % 8];
  snprintf(p, sizeof path[0], "%s/%s", tmp_dir, name);
  return p;
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *fp = fopen(path, "wb");
  if (!fp || fwrite(data, 1, n, fp) != n || fclose(fp) != 0) {
    printf("cannot write %s\n", path);
    exit(1);
  }
}

static void write_text(const char *path, const char *text) {
  write_bytes(path, text, strlen(text));
}

/* A one-line message that contains every one of the given strings. */
static int one_line_naming(const char *err, const char *a, const char *b) {
  return !strchr(err, '\n') && strstr(err, a) && (!b || strstr(err, b));
}

/* decode(encode(text)) == text; returns the ids through *ids (caller frees ids->v). */
static int round_trips(struct eellm_tokenizer *tok, const char *text, size_t len,
                       struct eellm_ids *ids) {
  struct eellm_bytes back = {0};
  ids->n = 0;
  int ok = eellm_tokenizer_encode(tok, text, len, ids) == 0 &&
           eellm_tokenizer_decode(tok, ids->v, ids->n, &back) == 0 && back.n == len &&
           (len == 0 || memcmp(back.v, text, len) == 0);
  free(back.v);
  return ok;
}

/* ---- byte tokenizer ------------------------------------------------------- */

static void test_byte(void) {
  char err[512];
  struct eellm_tokenizer *tok = eellm_tokenizer_open("byte", NULL, err, sizeof err);
  if (!check(tok != NULL, "open byte: %s", err)) return;
  check(eellm_tokenizer_vocab_size(tok) == 257 && eellm_tokenizer_eot_id(tok) == 256 &&
            eellm_tokenizer_id(tok) == EELLM_TOKENIZER_BYTE,
        "byte: vocab 257, end-of-text 256");
  struct eellm_ids ids = {0};
  const char text[] = "a\0\xff\n";
  check(round_trips(tok, text, 4, &ids) && ids.n == 4 && ids.v[0] == 'a' && ids.v[1] == 0 &&
            ids.v[2] == 255 && ids.v[3] == '\n',
        "byte: ids are the bytes");
  char random[1000];
  int all_ok = 1;
  for (int trial = 0; trial < 50; trial++) {
    size_t n = next_random() % sizeof random;
    for (size_t i = 0; i < n; i++) random[i] = (char)next_random();
    all_ok &= round_trips(tok, random, n, &ids);
  }
  check(all_ok, "byte: random bytes round trip");
  struct eellm_bytes text_out = {0};
  uint16_t eot = 256, outside = 257;
  check(eellm_tokenizer_decode(tok, &eot, 1, &text_out) == 0 && text_out.n == 13 &&
            memcmp(text_out.v, "<|endoftext|>", 13) == 0,
        "byte: end-of-text decodes as <|endoftext|>");
  text_out.n = 0;
  check(eellm_tokenizer_decode(tok, &outside, 1, &text_out) != 0 && text_out.n == 0,
        "byte: decoding id 257 fails");
  free(text_out.v);
  free(ids.v);
  eellm_tokenizer_close(tok);
  check(!eellm_tokenizer_open("bpe", NULL, err, sizeof err) && one_line_naming(err, "bpe", NULL),
        "unknown tokenizer kind: %s", err);
}

/* ---- gpt2: known encodings ------------------------------------------------ */

static int ids_equal(const struct eellm_ids *ids, const uint16_t *want, size_t n) {
  return ids->n == n && (n == 0 || memcmp(ids->v, want, n * sizeof *want) == 0);
}

static void test_known(struct eellm_tokenizer *tok) {
  static const struct {
    const char *text;
    uint16_t ids[8];
    size_t n;
  } known[] = {
      {"Hello world", {15496, 995}, 2},
      {"hello world", {31373, 995}, 2},
      {"", {0}, 0},
      {"!", {0}, 1},
      {"\n", {198}, 1},
      {" the", {262}, 1},
      /* Special tokens in text are plain text. */
      {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}, 7},
  };
  struct eellm_ids ids = {0};
  for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
    ids.n = 0;
    eellm_tokenizer_encode(tok, known[k].text, strlen(known[k].text), &ids);
    check(ids_equal(&ids, known[k].ids, known[k].n), "gpt2 \"%s\": %zu ids, want %zu",
          known[k].text, ids.n, known[k].n);
  }
  check(eellm_tokenizer_vocab_size(tok) == 50257 && eellm_tokenizer_eot_id(tok) == 50256 &&
            eellm_tokenizer_id(tok) == EELLM_TOKENIZER_GPT2,
        "gpt2: vocab 50257, end-of-text 50256");
  struct eellm_bytes text = {0};
  uint16_t eot = 50256;
  check(eellm_tokenizer_decode(tok, &eot, 1, &text) == 0 && text.n == 13 &&
            memcmp(text.v, "<|endoftext|>", 13) == 0,
        "gpt2: end-of-text decodes as <|endoftext|>");
  free(text.v);
  free(ids.v);
}

/* ---- gpt2 against the Python reference ----------------------------------- */

/* Test strings: fixed cases, then random mixes of the pieces below. */
static const char *const fixed_cases[] = {
    "",
    " ",
    "  ",
    "a",
    "Hello, world! How's it going?",
    "I'm sure you'll see they've said we'd go; it's 'quoted' and 'S isn't 's",
    "don't DON'T won't can't y'all o'clock rock'n'roll",
    "'s's's'''' 're 'RE ''ll",
    "café naïve résumé Ærøskøbing Straße façade",
    "Γειά σου Κόσμε",
    "Привет, мир!",
    "中文测试：你好，世界。",
    "日本語のテキスト、カタカナ、ひらがな",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "😀 😃👍🏽 👨‍👩‍👧 🇫🇷🇩🇪 ❤️",
    "1234567890 3.14159 1,000,000 12:30pm 2024-01-01 0x1F ٣٤٥ १२३ １２３ ²³ Ⅻ",
    "Mixed!!! punctuation??? ... --- ___ *** (((nested))) [[x]] {y} <z> @#$%^&*",
    "a\nb\n\nc\n\n\n\nd",
    "line\r\nwindows\r\n",
    "tab\there\t\t\tand\t",
    "trailing spaces   ",
    "   leading spaces",
    "a          b",
    "                    ",
    "\n  \n\t \n   x",
    " \u00a0 \u2003 \u3000 \u2028 \xc2\x85 \x0b \x0c \x1c",
    "e\u0301 a\u0308 combining",
    "zero\u200bwidth\u200djoiner",
    "\x01\x02\x7f control",
    "$100 €50 £30 ¥1000 ∑∏∫ ≤≥≠ ← → ⇒",
    "http://example.com/path?q=1&r=2#frag",
    "int main(void) { return 0; }  // C code\n\tif (x) y++;",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox jumps over the lazy dog",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
};

static const char *const pieces[] = {
    "a",        "e",      "the",    "The",  "ing",  " and",    " of",    "tion",   "Hello",
    " world",   "'s",     "'t",     "'re",  "'ve",  "'m",      "'ll",    "'d",     "'",
    "'S",       "\"",     " ",      "  ",   "   ",  "       ", "\t",     "\n",     "\n\n",
    "\r\n",     "0",      "7",      "42",   "1999", "3.5",     ",",      ".",      "!",
    "?",        "...",    "-",      "--",   "(",    ")",       "#",      "@",      "_",
    "/",        "\\",     "é",      "ü",    "ß",    "ñ",       "Ω",      "λ",      "Ж",
    "я",        "中",     "文",     "日",   "の",   "カ",      "한",     "ا",      "ש",
    "न",        "\u0301", "\u0308", "😀",    "👍",    "🏽",    "\u200d", "❤",      "\ufe0f",
    "٣",        "१",      "１",     "²",    "Ⅻ",    "\u00a0",  "\u2003", "\u3000", "\u2028",
    "\xc2\x85", "\x0b",   "\x0c",   "\x1c", "\x01", "€",       "∑",      "→",
};

#define N_RANDOM_CASES 3000

static size_t make_random_case(char *out, size_t cap) {
  size_t n = 0, count = next_random() % 24;
  for (size_t i = 0; i < count; i++) {
    const char *p = pieces[next_random() % (sizeof pieces / sizeof pieces[0])];
    size_t len = strlen(p);
    if (n + len >= cap) break;
    memcpy(out + n, p, len);
    n += len;
  }
  out[n] = '\0';
  return n;
}

/* All test strings in one array of NUL-terminated strings. */
struct cases {
  char **text;
  size_t n;
};

static struct cases make_cases(void) {
  size_t n_fixed = sizeof fixed_cases / sizeof fixed_cases[0];
  struct cases c = {calloc(n_fixed + N_RANDOM_CASES + 1, sizeof(char *)), 0};
  for (size_t i = 0; i < n_fixed; i++) c.text[c.n++] = strdup(fixed_cases[i]);
  char buf[512];
  for (int i = 0; i < N_RANDOM_CASES; i++) {
    make_random_case(buf, sizeof buf);
    c.text[c.n++] = strdup(buf);
  }
  char *spaces = malloc(5001); /* a long white space run, then a word */
  memset(spaces, ' ', 5000);
  memcpy(spaces + 4990, "\n\n\tword", 8);
  c.text[c.n++] = spaces;
  return c;
}

static void free_cases(struct cases *c) {
  for (size_t i = 0; i < c->n; i++) free(c->text[i]);
  free(c->text);
}

/* Runs the Python reference on the cases; returns its output lines (NULL on failure). */
static char **reference_ids(const struct cases *c) {
  const char *in = tmp_path("cases.hex"), *out = tmp_path("reference.ids");
  FILE *fp = fopen(in, "w");
  if (!fp) return NULL;
  for (size_t i = 0; i < c->n; i++) {
    for (const unsigned char *p = (const unsigned char *)c->text[i]; *p; p++)
      fprintf(fp, "%02x", *p);
    fputc('\n', fp);
  }
  fclose(fp);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/gpt2_reference.py %s < %s > %s", GPT2_DIR, in,
           out);
  if (system(cmd) != 0) return NULL;
  fp = fopen(out, "r");
  if (!fp) return NULL;
  char **lines = calloc(c->n, sizeof *lines);
  size_t cap = 0, i = 0;
  char *line = NULL;
  while (i < c->n && getline(&line, &cap, fp) >= 0) lines[i++] = strdup(line);
  free(line);
  fclose(fp);
  return lines;
}

static int matches_reference(const struct eellm_ids *ids, const char *line) {
  size_t i = 0;
  char *end;
  for (const char *p = line;; p = end) {
    long id = strtol(p, &end, 10);
    if (end == p) break;
    if (i >= ids->n || ids->v[i++] != id) return 0;
  }
  return i == ids->n;
}

static void test_reference(struct eellm_tokenizer *tok) {
  struct cases c = make_cases();
  char **want = reference_ids(&c);
  if (check(want != NULL, "tests/gpt2_reference.py did not run (needs python3-regex)")) {
    struct eellm_ids ids = {0};
    size_t mismatches = 0, broken = 0;
    for (size_t i = 0; i < c.n; i++) {
      int trips = round_trips(tok, c.text[i], strlen(c.text[i]), &ids);
      int same = want[i] && matches_reference(&ids, want[i]);
      if ((!trips && broken++ < 5) || (!same && mismatches++ < 5))
        printf("  case %zu \"%.60s\": %s\n    eellm %zu ids, reference %s", i, c.text[i],
               trips ? "differs" : "no round trip", ids.n, want[i] ? want[i] : "(none)\n");
      free(want[i]);
    }
    check(mismatches == 0, "gpt2: %zu of %zu strings differ from the reference", mismatches, c.n);
    check(broken == 0, "gpt2: %zu of %zu strings do not round trip", broken, c.n);
    printf("gpt2: %zu strings compared with the Python reference, %zu differ\n", c.n, mismatches);
    free(ids.v);
  }
  free(want);
  free_cases(&c);
}

/* ---- gpt2 on arbitrary bytes ---------------------------------------------- */

static void test_any_bytes(struct eellm_tokenizer *tok) {
  static const char *const invalid[] = {
      "\xff",
      "\xfe\xff",
      "\x80",
      "abc\x80"
      "def",
      "\xc3",
      "\xc3(",
      "\xe4\xb8",
      "\xe4\xb8 x",
      "\xf0\x9f\x98",
      "\xed\xa0\x80",
      "\xc0\xaf",
      "\xf8\x88\x80\x80\x80",
      "caf\xe9 na\xefve",
      " \xff ",
      "\xff\xff\xff\xff\xff\xff\xff\xff",
      "'s\xff's",
      "12\x80"
      "34",
      "\n\xa0\n",
  };
  struct eellm_ids ids = {0};
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
    check(round_trips(tok, invalid[i], strlen(invalid[i]), &ids), "gpt2: invalid UTF-8 case %zu",
          i);
  char text[600];
  size_t bad = 0;
  for (int trial = 0; trial < 2000; trial++) {
    size_t n = next_random() % sizeof text;
    int mode = trial % 3; /* raw bytes; ASCII with stray bytes; UTF-8 pieces with cuts */
    size_t i = 0;
    while (i < n) {
      if (mode == 0) {
        text[i++] = (char)next_random();
      } else if (mode == 1) {
        text[i++] = next_random() % 16 ? (char)(' ' + next_random() % 95) : (char)next_random();
      } else {
        const char *p = pieces[next_random() % (sizeof pieces / sizeof pieces[0])];
        size_t len = strlen(p), take = next_random() % 8 ? len : next_random() % len;
        for (size_t k = 0; k < take && i < n; k++) text[i++] = p[k];
      }
    }
    bad += !round_trips(tok, text, n, &ids);
  }
  check(bad == 0, "gpt2: %zu of 2000 random byte strings do not round trip", bad);
  free(ids.v);
}

static void test_long_word(struct eellm_tokenizer *tok) {
  size_t n = 1 << 20;
  char *word = malloc(n);
  for (size_t i = 0; i < n; i++) word[i] = "abcdefghijklmnopqrstuvwxyz"[next_random() % 26];
  struct eellm_ids ids = {0};
  clock_t t0 = clock();
  int ok = round_trips(tok, word, n, &ids);
  double seconds = (double)(clock() - t0) / CLOCKS_PER_SEC;
  check(ok && seconds < 5, "gpt2: a 1 MiB word round trips in %.2f s", seconds);
  printf("gpt2: a 1 MiB random word: %zu ids in %.2f s\n", ids.n, seconds);
  free(ids.v);
  free(word);
}

/* ---- gpt2 files ---------------------------------------------------------- */

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  char *data = NULL;
  size_t n = 0, cap = 0;
  int c;
  while (in && (c = fgetc(in)) != EOF) {
    if (n == cap) data = realloc(data, cap = cap ? 2 * cap : 1 << 16);
    data[n++] = (char)c;
  }
  if (in) fclose(in);
  write_bytes(to, data, n);
  free(data);
}

static void test_gpt2_files(void) {
  char err[512];
  const char *dir = tmp_path("gpt2"), *encoder = tmp_path("gpt2/encoder.json"),
             *merges = tmp_path("gpt2/vocab.bpe");
  mkdir(dir, 0755);
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) &&
            one_line_naming(err, encoder, "cannot open"),
        "gpt2: missing encoder.json: %s", err);
  copy_file(GPT2_DIR "/encoder.json", encoder);
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) && one_line_naming(err, merges, NULL),
        "gpt2: missing vocab.bpe: %s", err);
  write_text(merges, "#version: 0.2\nĠ t\nĠ a b\n");
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) &&
            one_line_naming(err, tmp_path("gpt2/vocab.bpe:3:"), NULL),
        "gpt2: a bad merge line is named: %s", err);
  write_text(merges, "#version: 0.2\nĠ t\nĠ t\n");
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) &&
            one_line_naming(err, tmp_path("gpt2/vocab.bpe:3:"), "earlier"),
        "gpt2: a repeated merge is named: %s", err);
  write_text(merges, "#version: 0.2\nĠt he\nĠ t\n");
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) &&
            one_line_naming(err, tmp_path("gpt2/vocab.bpe:3:"), NULL),
        "gpt2: a merge making a token used before is named: %s", err);
  write_text(encoder, "{\"a\": 0, \"b\": 0}");
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) && one_line_naming(err, encoder, NULL),
        "gpt2: repeated ids in encoder.json: %s", err);
  write_text(encoder, "{\"a\": 0,");
  check(!eellm_tokenizer_open("gpt2", dir, err, sizeof err) && one_line_naming(err, encoder, NULL),
        "gpt2: malformed encoder.json: %s", err);

  /* EELLM_TOKENIZER_DIR is the default directory. */
  setenv("EELLM_TOKENIZER_DIR", dir, 1);
  check(!eellm_tokenizer_open("gpt2", NULL, err, sizeof err) && one_line_naming(err, encoder, NULL),
        "gpt2: EELLM_TOKENIZER_DIR is read: %s", err);
  unsetenv("EELLM_TOKENIZER_DIR");
  check(strcmp(eellm_tokenizer_dir(NULL), "data/gpt2") == 0, "default tokenizer directory");
  remove(encoder);
  remove(merges);
  rmdir(dir);
}

/* ---- token files ---------------------------------------------------------- */

static const struct eellm_tokens_info byte_info = {EELLM_TOKENIZER_BYTE, 257, 256};

static void write_tokens(const char *path, const uint16_t *ids, size_t n) {
  char err[512];
  struct eellm_tokens_writer *w = eellm_tokens_create(path, &byte_info, err, sizeof err);
  if (!w || eellm_tokens_append(w, ids, n, err, sizeof err) != 0 ||
      eellm_tokens_commit(w, err, sizeof err) != 0) {
    printf("cannot write %s: %s\n", path, err);
    exit(1);
  }
}

static unsigned char *read_all(const char *path, size_t *n) {
  FILE *fp = fopen(path, "rb");
  unsigned char *data = malloc(1 << 16);
  *n = fread(data, 1, 1 << 16, fp);
  fclose(fp);
  return data;
}

/* The file at path fails to open with one line containing path and want. */
static void expect_open_error(const char *what, const char *path, const char *want) {
  char err[512] = "";
  struct eellm_token_file *file = eellm_tokens_open(path, err, sizeof err);
  check(!file && one_line_naming(err, path, want), "token file %s: got \"%s\", want \"%s\"", what,
        err, want);
  eellm_tokens_close(file);
}

static void test_token_files(void) {
  char err[512];
  const char *good = tmp_path("good.bin");
  uint16_t ids[] = {72, 105, 256, 0, 255, 10};
  write_tokens(good, ids, 6);
  struct eellm_token_file *file = eellm_tokens_open(good, err, sizeof err);
  check(file && file->count == 6 && memcmp(file->tokens, ids, sizeof ids) == 0 &&
            file->info.tokenizer == EELLM_TOKENIZER_BYTE && file->info.vocab_size == 257 &&
            file->info.eot_id == 256,
        "token file round trip: %s", file ? "" : err);
  eellm_tokens_close(file);
  size_t size;
  unsigned char *bytes = read_all(good, &size);
  check(size == 32 + 12 &&
            memcmp(bytes, "EELLMTOK\1\0\0\0\0\0\0\0\1\1\0\0\0\1\0\0\6\0\0\0\0\0\0\0H\0", 34) == 0,
        "token file layout: magic, version, tokenizer, vocab, eot, count, little-endian ids");

  const char *empty = tmp_path("empty.bin");
  write_tokens(empty, NULL, 0);
  file = eellm_tokens_open(empty, err, sizeof err);
  check(file && file->count == 0, "empty token file opens with count 0: %s", file ? "" : err);
  eellm_tokens_close(file);

  const char *bad = tmp_path("bad.bin");
  write_bytes(bad, "", 0);
  expect_open_error("of 0 bytes", bad, "shorter than the 32-byte header");
  write_bytes(bad, bytes, 20);
  expect_open_error("of 20 bytes", bad, "shorter than the 32-byte header");
  unsigned char copy[64];
  memcpy(copy, bytes, size);
  copy[0] = 'X';
  write_bytes(bad, copy, size);
  expect_open_error("with a bad magic", bad, "bad magic");
  memcpy(copy, bytes, size);
  copy[8] = 2;
  write_bytes(bad, copy, size);
  expect_open_error("of version 2", bad, "version 2");
  write_bytes(bad, bytes, size - 2);
  expect_open_error("truncated", bad, "truncated");
  memcpy(copy, bytes, size);
  copy[size] = 0;
  write_bytes(bad, copy, size + 1);
  expect_open_error("with a trailing byte", bad, "trailing");
  memcpy(copy, bytes, size);
  copy[32 + 2 * 4] = 0x01, copy[32 + 2 * 4 + 1] = 0x01; /* token 4 := 257 */
  write_bytes(bad, copy, size);
  expect_open_error("with token 257", bad, "token 257 at position 4");
  memcpy(copy, bytes, size);
  copy[12] = 9;
  write_bytes(bad, copy, size);
  expect_open_error("with tokenizer 9", bad, "tokenizer id 9");
  expect_open_error("that does not exist", tmp_path("nosuch.bin"), "No such file");
  free(bytes);

  /* The writer refuses ids outside the vocabulary; an aborted write keeps the old file. */
  struct eellm_tokens_writer *w = eellm_tokens_create(good, &byte_info, err, sizeof err);
  uint16_t outside[] = {1, 2, 300};
  check(w && eellm_tokens_append(w, outside, 3, err, sizeof err) != 0 &&
            one_line_naming(err, good, "token 300 at position 2"),
        "writer refuses id 300: %s", err);
  eellm_tokens_abort(w);
  file = eellm_tokens_open(good, err, sizeof err);
  check(file && file->count == 6, "an aborted write leaves the old file");
  eellm_tokens_close(file);
  const struct eellm_tokens_info bad_info = {EELLM_TOKENIZER_BYTE, 257, 300};
  check(!eellm_tokens_create(good, &bad_info, err, sizeof err) &&
            one_line_naming(err, good, "end-of-text id 300"),
        "writer refuses end-of-text 300 of 257: %s", err);
  const char *unwritable = tmp_path("no/such/dir/out.bin");
  check(!eellm_tokens_create(unwritable, &byte_info, err, sizeof err) &&
            one_line_naming(err, unwritable, NULL),
        "writer in a missing directory: %s", err);
  remove(good);
  remove(empty);
  remove(bad);
}

int main(void) {
  if (!mkdtemp(tmp_dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_byte();
  test_token_files();
  if (check(system("scripts/fetch-tokenizer " GPT2_DIR) == 0, "scripts/fetch-tokenizer failed")) {
    char err[512];
    struct eellm_tokenizer *tok = eellm_tokenizer_open("gpt2", GPT2_DIR, err, sizeof err);
    if (check(tok != NULL, "open gpt2: %s", err)) {
      test_known(tok);
      test_reference(tok);
      test_any_bytes(tok);
      test_long_word(tok);
    }
    eellm_tokenizer_close(tok);
    test_gpt2_files();
  }
  remove(tmp_path("cases.hex"));
  remove(tmp_path("reference.ids"));
  rmdir(tmp_dir);
  printf("test_tokenizer: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
