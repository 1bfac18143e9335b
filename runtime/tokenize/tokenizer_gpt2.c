/* GPT-2's byte-level BPE tokenizer.
 *
 * Encoding follows OpenAI's encoder.py: GPT-2's regex splits the text into
 * pre-tokens (PCRE2 on the UTF-8 bytes), and each pre-token's bytes are merged
 * pairwise by vocab.bpe's ranks, the lowest-ranked pair first, until no ranked
 * pair is left; each resulting piece is a token of encoder.json.
 *
 * encoder.json and vocab.bpe spell token bytes through GPT-2's byte-to-unicode
 * mapping (every byte one printable code point). Loading maps them back once, so
 * that merging works on ids of byte strings.
 *
 * Bytes that no pre-token can hold (invalid UTF-8, which PCRE2_MATCH_INVALID_UTF
 * steps over) form pre-tokens of their own, so every byte is encoded and
 * decode(encode(x)) == x for any byte string.
 *
 * Known differences from encoder.py with Python's `regex` module (Unicode 15):
 * PCRE2 10.42 knows Unicode 14, so letters and digits new in Unicode 15 are
 * punctuation to it, and it counts U+180E MONGOLIAN VOWEL SEPARATOR as space. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tokenize/tokenizer_impl.h"

#define PRETOKEN_PATTERN \
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define EOT_TEXT "<|endoftext|>"
#define NO_RANK UINT32_MAX
#define CACHED_WORD_MAX 255          /* longer words are merged every time */
#define CACHE_ENTRIES_MAX (1u << 18) /* then the cache starts over */

/* vocab.bpe as a hash map: a pair of ids (left << 16 | right) -> its rank and the
 * id of the merged token. Empty slots have rank NO_RANK. */
struct merge {
  uint32_t pair, rank;
  uint16_t merged;
};
struct merge_map {
  struct merge *slots;
  uint32_t mask;
};

/* Encoded words: bytes -> ids, both kept in growable arrays. hash 0 is an empty slot. */
struct cache_entry {
  uint64_t hash;
  uint32_t word_at, word_len, ids_at, n_ids;
};
struct word_cache {
  struct cache_entry *slots;
  size_t mask, used;
  unsigned char *words;
  size_t words_n, words_cap;
  struct eellm_ids ids;
};

/* BPE scratch: a word's pieces as a linked list by byte position, and a min-heap
 * of candidate merges (rank, position of the left piece). */
struct piece {
  uint16_t id;
  int32_t prev, next; /* -1 at the ends; prev == -2 once merged into its left neighbour */
};
struct candidate {
  uint32_t rank, at;
};

struct gpt2 {
  pcre2_code *pretokenizer;
  pcre2_match_data *match;
  uint16_t byte_id[256];
  struct merge_map merges;
  struct word_cache cache;
  struct piece *pieces;
  struct candidate *heap;
  size_t scratch_cap, heap_n; /* pieces hold scratch_cap, heap 3 * scratch_cap */
};

/* ---- the byte-to-unicode mapping ---------------------------------------- */

/* GPT-2 spells a byte as itself when it is a printable Latin-1 character
 * ('!'..'~', 0xA1..0xAC, 0xAE..0xFF), and the other 68 bytes, in order, as
 * U+0100..U+0143. byte_of[code point] inverts it (-1: not a byte's spelling). */
#define SPELLING_END 0x144
static void byte_spellings(int16_t byte_of[SPELLING_END]) {
  uint32_t next = 0x100;
  for (int cp = 0; cp < SPELLING_END; cp++) byte_of[cp] = -1;
  for (int b = 0; b < 256; b++) {
    int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    byte_of[printable ? (uint32_t)b : next++] = (int16_t)b;
  }
}

/* Decodes one code point of valid UTF-8 (jansson has checked it) and advances *p. */
static uint32_t next_code_point(const unsigned char **p) {
  const unsigned char *s = *p;
  int extra = s[0] < 0x80 ? 0 : s[0] < 0xE0 ? 1 : s[0] < 0xF0 ? 2 : 3;
  uint32_t cp = extra ? s[0] & (0x3F >> extra) : s[0];
  for (int i = 1; i <= extra; i++) cp = cp << 6 | (s[i] & 0x3F);
  *p = s + 1 + extra;
  return cp;
}

/* Maps a token's spelling back to bytes in out (room for strlen(spelling)).
 * Returns the byte count, or -1 if a character is no byte's spelling. */
static long spelling_to_bytes(const char *spelling, const int16_t byte_of[SPELLING_END],
                              char *out) {
  const unsigned char *p = (const unsigned char *)spelling;
  long n = 0;
  while (*p) {
    uint32_t cp = next_code_point(&p);
    if (cp >= SPELLING_END || byte_of[cp] < 0) return -1;
    if (out) out[n] = (char)byte_of[cp];
    n++;
  }
  return n;
}

/* ---- encoder.json --------------------------------------------------------- */

/* Reads the ids of encoder.json into the decoding table and byte_id. */
static int load_encoder(struct eellm_tokenizer *tok, struct gpt2 *g, json_t *encoder,
                        const char *path, char *err, size_t errlen) {
  int16_t byte_of[SPELLING_END];
  byte_spellings(byte_of);
  size_t n = json_object_size(encoder);
  if (n == 0 || n > 65536) {
    snprintf(err, errlen, "%s: %zu tokens; want 1..65536", path, n);
    return -1;
  }
  tok->vocab_size = (uint32_t)n;
  tok->piece_at = calloc(n + 1, sizeof *tok->piece_at);
  if (!tok->piece_at) goto oom;
  /* First pass: check the ids, and count each token's bytes into piece_at[id + 1]. */
  size_t total = 0;
  const char *spelling;
  json_t *value;
  json_object_foreach(encoder, spelling, value) {
    json_int_t id = json_is_integer(value) ? json_integer_value(value) : -1;
    if (id < 0 || (size_t)id >= n || tok->piece_at[id + 1]) {
      snprintf(err, errlen, "%s: token \"%s\": id is not a new integer in 0..%zu", path, spelling,
               n - 1);
      return -1;
    }
    long len = spelling_to_bytes(spelling, byte_of, NULL);
    if (len <= 0) {
      snprintf(err, errlen, "%s: token \"%s\" is not spelled in GPT-2's byte alphabet", path,
               spelling);
      return -1;
    }
    tok->piece_at[id + 1] = (uint32_t)len;
    total += (size_t)len;
  }
  for (size_t id = 0; id < n; id++) tok->piece_at[id + 1] += tok->piece_at[id];
  tok->pieces = malloc(total);
  if (!tok->pieces) goto oom;
  /* Second pass: the bytes, and the id of every one-byte token. */
  int has_byte[256] = {0};
  json_object_foreach(encoder, spelling, value) {
    uint32_t at = tok->piece_at[json_integer_value(value)];
    if (spelling_to_bytes(spelling, byte_of, tok->pieces + at) == 1) {
      unsigned char b = (unsigned char)tok->pieces[at];
      g->byte_id[b] = (uint16_t)json_integer_value(value);
      has_byte[b] = 1;
    }
  }
  for (int b = 0; b < 256; b++)
    if (!has_byte[b]) {
      snprintf(err, errlen, "%s: no token for byte 0x%02x", path, b);
      return -1;
    }
  json_t *eot = json_object_get(encoder, EOT_TEXT);
  if (!eot) {
    snprintf(err, errlen, "%s: no token \"" EOT_TEXT "\"", path);
    return -1;
  }
  tok->eot_id = (uint16_t)json_integer_value(eot);
  return 0;
oom:
  snprintf(err, errlen, "%s: out of memory", path);
  return -1;
}

/* ---- vocab.bpe ---------------------------------------------------------- */

static uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85ebca6bu;
  x ^= x >> 13;
  x *= 0xc2b2ae35u;
  return x ^ x >> 16;
}

static const struct merge *merge_find(const struct merge_map *map, uint16_t left, uint16_t right) {
  uint32_t pair = (uint32_t)left << 16 | right;
  for (uint32_t i = mix32(pair) & map->mask;; i = (i + 1) & map->mask) {
    if (map->slots[i].rank == NO_RANK) return NULL;
    if (map->slots[i].pair == pair) return &map->slots[i];
  }
}

/* Inserts a new pair; returns 0, or -1 if the pair is there already. The map is
 * sized for every line of the file, so it never fills. */
static int merge_insert(struct merge_map *map, uint16_t left, uint16_t right, uint32_t rank,
                        uint16_t merged) {
  uint32_t pair = (uint32_t)left << 16 | right;
  uint32_t i = mix32(pair) & map->mask;
  for (; map->slots[i].rank != NO_RANK; i = (i + 1) & map->mask)
    if (map->slots[i].pair == pair) return -1;
  map->slots[i] = (struct merge){pair, rank, merged};
  return 0;
}

static char *read_file(const char *path, size_t *size, char *err, size_t errlen) {
  FILE *fp = fopen(path, "rb");
  char *data = NULL;
  long len = -1;
  if (fp && fseek(fp, 0, SEEK_END) == 0 && (len = ftell(fp)) >= 0 && fseek(fp, 0, SEEK_SET) == 0 &&
      (data = malloc((size_t)len + 1)) && fread(data, 1, (size_t)len, fp) == (size_t)len) {
    data[len] = '\0';
    *size = (size_t)len;
    fclose(fp);
    return data;
  }
  snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
  free(data);
  if (fp) fclose(fp);
  return NULL;
}

/* The id of a token given by its spelling, or -1. */
static long token_id(json_t *encoder, const char *spelling, size_t len) {
  json_t *value = json_object_getn(encoder, spelling, len);
  return value ? (long)json_integer_value(value) : -1;
}

/* Parses "LEFT RIGHT" (line has no newline, and is modified) into ids. A merge may
 * only use tokens that no later merge makes: BPE below relies on new pairs always
 * ranking after the merge that formed them. made[] marks the tokens made so far,
 * used[] those used as a part. */
static int parse_merge(char *line, size_t len, json_t *encoder, uint8_t *made, uint8_t *used,
                       uint16_t ids[3], const char **why) {
  char *space = memchr(line, ' ', len);
  if (!space || space == line || space + 1 == line + len ||
      memchr(space + 1, ' ', line + len - space - 1)) {
    *why = "want two tokens separated by one space";
    return -1;
  }
  size_t left_len = (size_t)(space - line);
  long left = token_id(encoder, line, left_len);
  long right = token_id(encoder, space + 1, len - left_len - 1);
  memmove(space, space + 1, len - left_len - 1); /* LEFT RIGHT -> LEFTRIGHT */
  long merged = token_id(encoder, line, len - 1);
  if (left < 0 || right < 0 || merged < 0) {
    *why = "a token of the merge or its result is not in encoder.json";
    return -1;
  }
  ids[0] = (uint16_t)left, ids[1] = (uint16_t)right, ids[2] = (uint16_t)merged;
  if (made[ids[2]] || used[ids[2]]) {
    *why = "its result is made or used by an earlier merge";
    return -1;
  }
  used[ids[0]] = used[ids[1]] = made[ids[2]] = 1;
  return 0;
}

static int load_merges(struct gpt2 *g, json_t *encoder, uint32_t vocab_size, const char *path,
                       char *err, size_t errlen) {
  size_t size;
  char *text = read_file(path, &size, err, errlen);
  if (!text) return -1;
  size_t lines = 1;
  for (size_t i = 0; i < size; i++) lines += text[i] == '\n';
  uint32_t cap = 1;
  while (cap < 2 * lines) cap *= 2;
  g->merges.mask = cap - 1;
  g->merges.slots = malloc(cap * sizeof *g->merges.slots);
  uint8_t *made = calloc(vocab_size, 1), *used = calloc(vocab_size, 1);
  int rc = g->merges.slots && made && used ? 0 : -1;
  if (rc) snprintf(err, errlen, "%s: out of memory", path);
  for (uint32_t i = 0; !rc && i < cap; i++) g->merges.slots[i].rank = NO_RANK;
  uint32_t rank = 0, line_no = 0;
  for (char *line = text; !rc && line < text + size; line += strlen(line) + 1) {
    char *newline = strchr(line, '\n');
    if (newline) *newline = '\0';
    size_t len = strlen(line);
    line_no++;
    if (len && line[len - 1] == '\r') line[--len] = '\0';
    if (len == 0 || (line_no == 1 && strncmp(line, "#version", 8) == 0)) continue;
    uint16_t ids[3];
    const char *why = "the same pair as an earlier merge";
    if (parse_merge(line, len, encoder, made, used, ids, &why) != 0 ||
        merge_insert(&g->merges, ids[0], ids[1], rank++, ids[2]) != 0) {
      snprintf(err, errlen, "%s:%u: %s", path, line_no, why);
      rc = -1;
    }
  }
  free(made);
  free(used);
  free(text);
  return rc;
}

/* ---- BPE ------------------------------------------------------------------ */

static int candidate_before(struct candidate a, struct candidate b) {
  return a.rank < b.rank || (a.rank == b.rank && a.at < b.at);
}

static void heap_push(struct gpt2 *g, struct candidate c) {
  size_t i = g->heap_n++;
  for (; i > 0 && candidate_before(c, g->heap[(i - 1) / 2]); i = (i - 1) / 2)
    g->heap[i] = g->heap[(i - 1) / 2];
  g->heap[i] = c;
}

static struct candidate heap_pop(struct gpt2 *g) {
  struct candidate top = g->heap[0], last = g->heap[--g->heap_n];
  size_t i = 0;
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= g->heap_n) break;
    if (child + 1 < g->heap_n && candidate_before(g->heap[child + 1], g->heap[child])) child++;
    if (!candidate_before(g->heap[child], last)) break;
    g->heap[i] = g->heap[child];
    i = child;
  }
  g->heap[i] = last;
  return top;
}

/* Queues the merge of the piece at `at` with its right neighbour, if vocab.bpe has it. */
static void consider(struct gpt2 *g, int32_t at) {
  int32_t next = g->pieces[at].next;
  if (next < 0) return;
  const struct merge *m = merge_find(&g->merges, g->pieces[at].id, g->pieces[next].id);
  if (m) heap_push(g, (struct candidate){m->rank, (uint32_t)at});
}

static int reserve_scratch(struct gpt2 *g, size_t n) {
  if (n <= g->scratch_cap) return 0;
  struct piece *pieces = realloc(g->pieces, n * sizeof *pieces);
  if (pieces) g->pieces = pieces;
  struct candidate *heap = realloc(g->heap, 3 * n * sizeof *heap);
  if (heap) g->heap = heap;
  if (!pieces || !heap) return -1;
  g->scratch_cap = n;
  return 0;
}

/* Appends the ids of one pre-token of n >= 1 bytes.
 * Popping candidates by (rank, position) applies the lowest-ranked pair everywhere
 * in the word, left to right, before any higher rank, as encoder.py does: a merge
 * only forms pairs that rank after it (load_merges checks). */
static int merge_word(struct gpt2 *g, const unsigned char *word, size_t n, struct eellm_ids *ids) {
  if (n > INT32_MAX || reserve_scratch(g, n) != 0 || eellm_ids_reserve(ids, n) != 0) return -1;
  g->heap_n = 0;
  for (size_t i = 0; i < n; i++)
    g->pieces[i] =
        (struct piece){g->byte_id[word[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
  for (size_t i = 0; i + 1 < n; i++) consider(g, (int32_t)i);
  while (g->heap_n) {
    struct candidate c = heap_pop(g);
    struct piece *left = &g->pieces[c.at];
    if (left->prev == -2 || left->next < 0) continue;
    struct piece *right = &g->pieces[left->next];
    const struct merge *m = merge_find(&g->merges, left->id, right->id);
    if (!m || m->rank != c.rank) continue; /* stale: a neighbour merged since */
    left->id = m->merged;
    left->next = right->next;
    if (right->next >= 0) g->pieces[right->next].prev = (int32_t)c.at;
    right->prev = -2;
    if (left->prev >= 0) consider(g, left->prev);
    consider(g, (int32_t)c.at);
  }
  for (int32_t at = 0; at >= 0; at = g->pieces[at].next) ids->v[ids->n++] = g->pieces[at].id;
  return 0;
}

/* ---- the word cache ------------------------------------------------------ */

static uint64_t hash_word(const unsigned char *word, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ word[i]) * 0x100000001b3ull;
  return h | 1; /* 0 marks empty slots */
}

/* The slot of word: its entry, or the empty slot where it belongs. */
static struct cache_entry *cache_slot(struct word_cache *c, const unsigned char *word, size_t n,
                                      uint64_t hash) {
  for (size_t i = hash & c->mask;; i = (i + 1) & c->mask) {
    struct cache_entry *e = &c->slots[i];
    if (!e->hash ||
        (e->hash == hash && e->word_len == n && memcmp(c->words + e->word_at, word, n) == 0))
      return e;
  }
}

static void cache_clear(struct word_cache *c) {
  memset(c->slots, 0, (c->mask + 1) * sizeof *c->slots);
  c->used = c->words_n = c->ids.n = 0;
}

/* Doubles the table while it may grow, else empties it, to keep it at most half full. */
static int cache_make_room(struct word_cache *c) {
  if (c->used + 1 <= (c->mask + 1) / 2) return 0;
  if ((c->mask + 1) / 2 >= CACHE_ENTRIES_MAX) {
    cache_clear(c);
    return 0;
  }
  size_t cap = 2 * (c->mask + 1);
  struct cache_entry *old = c->slots, *slots = calloc(cap, sizeof *slots);
  if (!slots) return -1;
  size_t old_cap = c->mask + 1;
  c->slots = slots;
  c->mask = cap - 1;
  for (size_t i = 0; i < old_cap; i++) {
    if (!old[i].hash) continue;
    size_t j = old[i].hash & c->mask;
    while (slots[j].hash) j = (j + 1) & c->mask;
    slots[j] = old[i];
  }
  free(old);
  return 0;
}

static int cache_add(struct word_cache *c, const unsigned char *word, size_t n, const uint16_t *ids,
                     size_t n_ids) {
  if (cache_make_room(c) != 0) return -1;
  if (c->words_n + n > c->words_cap) {
    size_t cap = 2 * (c->words_n + n);
    unsigned char *words = realloc(c->words, cap);
    if (!words) return -1;
    c->words = words;
    c->words_cap = cap;
  }
  if (eellm_ids_reserve(&c->ids, n_ids) != 0) return -1;
  struct cache_entry *e = cache_slot(c, word, n, hash_word(word, n));
  *e = (struct cache_entry){hash_word(word, n), (uint32_t)c->words_n, (uint32_t)n,
                            (uint32_t)c->ids.n, (uint32_t)n_ids};
  memcpy(c->words + c->words_n, word, n);
  c->words_n += n;
  memcpy(c->ids.v + c->ids.n, ids, n_ids * sizeof *ids);
  c->ids.n += n_ids;
  c->used++;
  return 0;
}

/* Appends the ids of one pre-token, from the cache when it has them. */
static int encode_word(struct gpt2 *g, const char *text, size_t n, struct eellm_ids *ids) {
  const unsigned char *word = (const unsigned char *)text;
  if (n == 1) return eellm_ids_push(ids, g->byte_id[word[0]]);
  if (n > CACHED_WORD_MAX) return merge_word(g, word, n, ids);
  struct word_cache *c = &g->cache;
  const struct cache_entry *e = cache_slot(c, word, n, hash_word(word, n));
  if (e->hash) {
    if (eellm_ids_reserve(ids, e->n_ids) != 0) return -1;
    memcpy(ids->v + ids->n, c->ids.v + e->ids_at, e->n_ids * sizeof *ids->v);
    ids->n += e->n_ids;
    return 0;
  }
  size_t first = ids->n;
  if (merge_word(g, word, n, ids) != 0) return -1;
  return cache_add(c, word, n, ids->v + first, ids->n - first);
}

/* ---- the tokenizer ------------------------------------------------------- */

static int encode_gpt2(struct eellm_tokenizer *tok, const char *text, size_t len,
                       struct eellm_ids *ids) {
  struct gpt2 *g = tok->state;
  const PCRE2_SIZE *match = pcre2_get_ovector_pointer(g->match);
  size_t at = 0;
  while (at < len) {
    int rc =
        pcre2_match(g->pretokenizer, (PCRE2_SPTR)text, len, at, PCRE2_NOTEMPTY, g->match, NULL);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) return -1;
    size_t start = rc < 0 ? len : match[0], end = rc < 0 ? len : match[1];
    if (start > at && encode_word(g, text + at, start - at, ids) != 0) return -1;
    if (end > start && encode_word(g, text + start, end - start, ids) != 0) return -1;
    at = end;
  }
  return 0;
}

static void free_gpt2(void *state) {
  struct gpt2 *g = state;
  if (!g) return;
  pcre2_match_data_free(g->match);
  pcre2_code_free(g->pretokenizer);
  free(g->merges.slots);
  free(g->cache.slots);
  free(g->cache.words);
  free(g->cache.ids.v);
  free(g->pieces);
  free(g->heap);
  free(g);
}

static int compile_pretokenizer(struct gpt2 *g, char *err, size_t errlen) {
  int code;
  PCRE2_SIZE offset;
  g->pretokenizer =
      pcre2_compile((PCRE2_SPTR)PRETOKEN_PATTERN, PCRE2_ZERO_TERMINATED,
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &offset, NULL);
  if (!g->pretokenizer) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(code, message, sizeof message);
    snprintf(err, errlen, "gpt2 tokenizer: PCRE2 cannot compile the pre-tokenizer: %s", message);
    return -1;
  }
  pcre2_jit_compile(g->pretokenizer, PCRE2_JIT_COMPLETE); /* without JIT, pcre2_match interprets */
  g->match = pcre2_match_data_create_from_pattern(g->pretokenizer, NULL);
  g->cache.slots = calloc(1024, sizeof *g->cache.slots);
  g->cache.mask = 1023;
  if (!g->match || !g->cache.slots) {
    snprintf(err, errlen, "gpt2 tokenizer: out of memory");
    return -1;
  }
  return 0;
}

static int load_files(struct eellm_tokenizer *tok, struct gpt2 *g, const char *dir, char *err,
                      size_t errlen) {
  char path[4096];
  snprintf(path, sizeof path, "%s/encoder.json", dir);
  json_error_t json_err;
  json_t *encoder = json_load_file(path, 0, &json_err);
  if (!encoder || !json_is_object(encoder)) {
    if (encoder)
      snprintf(err, errlen, "%s: not a JSON object", path);
    else if (json_error_code(&json_err) == json_error_cannot_open_file)
      snprintf(err, errlen, "%s: cannot open (scripts/fetch-tokenizer fetches it): %s", path,
               strerror(errno));
    else
      snprintf(err, errlen, "%s:%d:%d: %s", path, json_err.line, json_err.column, json_err.text);
    json_decref(encoder);
    return -1;
  }
  int rc = load_encoder(tok, g, encoder, path, err, errlen);
  snprintf(path, sizeof path, "%s/vocab.bpe", dir);
  if (rc == 0) rc = load_merges(g, encoder, tok->vocab_size, path, err, errlen);
  json_decref(encoder);
  return rc;
}

struct eellm_tokenizer *eellm_gpt2_tokenizer_open(const char *dir, char *err, size_t errlen) {
  struct eellm_tokenizer *tok = calloc(1, sizeof *tok);
  struct gpt2 *g = calloc(1, sizeof *g);
  if (!tok || !g) {
    snprintf(err, errlen, "gpt2 tokenizer: out of memory");
    free(tok);
    free(g);
    return NULL;
  }
  tok->id = EELLM_TOKENIZER_GPT2;
  tok->encode = encode_gpt2;
  tok->state = g;
  tok->free_state = free_gpt2;
  if (compile_pretokenizer(g, err, errlen) != 0 || load_files(tok, g, dir, err, errlen) != 0) {
    eellm_tokenizer_close(tok);
    return NULL;
  }
  return tok;
}
