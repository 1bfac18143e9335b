/* The trigram baseline (eval.h): interpolated Kneser-Ney over n-gram keys
 * sorted by a radix sort, so that any vocabulary up to 65536 ids works in
 * O(n) memory. Keys: a trigram (a, b, c) is (a W + b) W + c with W = V + 1,
 * the id V standing for "before the first token". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm/eval.h"

/* Distinct keys in ascending order and how often each occurred. */
struct ngrams {
  uint64_t *key;
  uint32_t *count;
  size_t n;
};

/* Sorts a[0..n-1] (keys below 2^bits) in 16-bit digits; tmp holds n keys. */
static int radix_sort(uint64_t *a, uint64_t *tmp, size_t n, unsigned bits) {
  size_t *bucket = malloc((1 << 16) * sizeof *bucket);
  if (!bucket) return -1;
  for (unsigned shift = 0; shift < bits; shift += 16) {
    memset(bucket, 0, (1 << 16) * sizeof *bucket);
    for (size_t i = 0; i < n; i++) bucket[(a[i] >> shift) & 0xffff]++;
    size_t sum = 0;
    for (size_t d = 0; d < 1 << 16; d++) {
      size_t c = bucket[d];
      bucket[d] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; i++) tmp[bucket[(a[i] >> shift) & 0xffff]++] = a[i];
    memcpy(a, tmp, n * sizeof *a);
  }
  free(bucket);
  return 0;
}

/* Sorts keys[0..n-1] (tmp: scratch for n) and collapses them into out, which
 * takes over keys. -1 when out of memory. */
static int collapse(uint64_t *keys, uint64_t *tmp, size_t n, unsigned bits, struct ngrams *out) {
  out->key = keys;
  out->count = malloc((n ? n : 1) * sizeof *out->count);
  if (!out->count || radix_sort(keys, tmp, n, bits) != 0) return -1;
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    if (m && keys[m - 1] == keys[i]) {
      out->count[m - 1]++;
    } else {
      keys[m] = keys[i];
      out->count[m++] = 1;
    }
  }
  out->n = m;
  return 0;
}

/* The index of key in g, g->n when absent. */
static size_t find(const struct ngrams *g, uint64_t key) {
  size_t lo = 0, hi = g->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (g->key[mid] < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < g->n && g->key[lo] == key ? lo : g->n;
}

/* The count of key in g, 0 when absent. */
static uint32_t lookup(const struct ngrams *g, uint64_t key) {
  size_t i = find(g, key);
  return i < g->n ? g->count[i] : 0;
}

/* Chen & Goodman's discount n1 / (n1 + 2 n2) from the counts of one order. */
static double discount(const uint32_t *count, size_t n) {
  double n1 = 0, n2 = 0;
  for (size_t i = 0; i < n; i++) n1 += count[i] == 1, n2 += count[i] == 2;
  return n1 > 0 ? n1 / (n1 + 2 * n2) : 0.5;
}

/* The discounted share of count among total, plus the mass left for the lower
 * order: discount times the distinct continuations over total. */
static double interpolate(double count, double total, double types, double d, double lower) {
  if (total <= 0) return lower;
  return fmax(count - d, 0) / total + d * types / total * lower;
}

/* Per context: the counts it was followed by and the distinct followers. */
struct contexts {
  struct ngrams prefix; /* key: the context; count: its total */
  uint32_t *types;      /* [prefix.n] */
};

/* Groups the keys of g by key / W (sorted, so contiguous): totals and types. */
static int group_contexts(const struct ngrams *g, uint64_t W, struct contexts *out) {
  out->prefix.key = malloc((g->n ? g->n : 1) * sizeof *out->prefix.key);
  out->prefix.count = malloc((g->n ? g->n : 1) * sizeof *out->prefix.count);
  out->types = malloc((g->n ? g->n : 1) * sizeof *out->types);
  if (!out->prefix.key || !out->prefix.count || !out->types) return -1;
  size_t m = 0;
  for (size_t i = 0; i < g->n; i++) {
    uint64_t ctx = g->key[i] / W;
    if (!m || out->prefix.key[m - 1] != ctx) {
      out->prefix.key[m] = ctx, out->prefix.count[m] = 0, out->types[m] = 0;
      m++;
    }
    out->prefix.count[m - 1] += g->count[i];
    out->types[m - 1]++;
  }
  out->prefix.n = m;
  return 0;
}

/* The total and distinct followers of context ctx. */
static void context_of(const struct contexts *c, uint64_t ctx, double *total, double *types) {
  size_t i = find(&c->prefix, ctx);
  int found = i < c->prefix.n;
  *total = found ? c->prefix.count[i] : 0;
  *types = found ? c->types[i] : 0;
}

struct model {
  uint64_t W;
  unsigned V;
  struct ngrams tri, bi;           /* c(abc); N1+(. b c) */
  struct contexts tri_ctx, bi_ctx; /* per (a, b); per b */
  double *uni;                     /* N1+(. c) per c: distinct bigram types ending in c */
  double uni_total, uni_types, d[3];
};

static void free_model(struct model *m) {
  free(m->tri.key), free(m->tri.count), free(m->bi.key), free(m->bi.count);
  free(m->tri_ctx.prefix.key), free(m->tri_ctx.prefix.count), free(m->tri_ctx.types);
  free(m->bi_ctx.prefix.key), free(m->bi_ctx.prefix.count), free(m->bi_ctx.types);
  free(m->uni);
}

static unsigned key_bits(uint64_t max_key) {
  unsigned bits = 16;
  while (bits < 64 && (max_key >> bits)) bits += 16;
  return bits;
}

/* Counts every order from the training tokens. -1 when out of memory. */
static int fit(struct model *m, const uint16_t *train, size_t n) {
  uint64_t W = m->W;
  size_t grams = n - 1;
  uint64_t *keys = malloc(grams * sizeof *keys), *tmp = malloc(grams * sizeof *tmp);
  if (!keys || !tmp) return free(keys), free(tmp), -1;
  for (size_t i = 0; i < grams; i++) {
    uint64_t a = i ? train[i - 1] : m->V;
    keys[i] = (a * W + train[i]) * W + train[i + 1];
  }
  int rc = collapse(keys, tmp, grams, key_bits(W * W * W), &m->tri);
  uint64_t *bi_keys = rc == 0 ? malloc((m->tri.n ? m->tri.n : 1) * sizeof *bi_keys) : NULL;
  if (!bi_keys) return free(tmp), -1;
  /* Continuation counts: each distinct (a, b, c) adds one to (b, c). */
  for (size_t i = 0; i < m->tri.n; i++) bi_keys[i] = m->tri.key[i] % (W * W);
  rc = collapse(bi_keys, tmp, m->tri.n, key_bits(W * W), &m->bi);
  free(tmp);
  if (rc != 0 || group_contexts(&m->tri, W, &m->tri_ctx) != 0 ||
      group_contexts(&m->bi, W, &m->bi_ctx) != 0 || !(m->uni = calloc(W, sizeof *m->uni)))
    return -1;
  for (size_t i = 0; i < m->bi.n; i++) m->uni[m->bi.key[i] % W]++;
  uint32_t *uni_counts = malloc(W * sizeof *uni_counts);
  if (!uni_counts) return -1;
  for (uint64_t c = 0; c < W; c++) {
    uni_counts[c] = (uint32_t)m->uni[c];
    m->uni_types += m->uni[c] > 0;
  }
  m->uni_total = (double)m->bi.n;
  m->d[0] = discount(uni_counts, W);
  m->d[1] = discount(m->bi.count, m->bi.n);
  m->d[2] = discount(m->tri.count, m->tri.n);
  free(uni_counts);
  return 0;
}

static double probability(const struct model *m, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t W = m->W;
  double p1 = interpolate(m->uni[c], m->uni_total, m->uni_types, m->d[0], 1.0 / m->V);
  double total, types;
  context_of(&m->bi_ctx, b, &total, &types);
  double p2 = interpolate(lookup(&m->bi, b * W + c), total, types, m->d[1], p1);
  context_of(&m->tri_ctx, a * W + b, &total, &types);
  return interpolate(lookup(&m->tri, (a * W + b) * W + c), total, types, m->d[2], p2);
}

static int check_ids(const char *what, const uint16_t *t, size_t n, unsigned V, char *err,
                     size_t errlen) {
  for (size_t i = 0; i < n; i++)
    if (t[i] >= V) {
      snprintf(err, errlen, "%s token %zu: id %u outside the vocabulary (%u)", what, i,
               (unsigned)t[i], V);
      return -1;
    }
  return 0;
}

int eellm_trigram_baseline(const uint16_t *train, size_t n_train, const uint16_t *val, size_t n_val,
                           unsigned vocab_size, struct eellm_trigram *out, char *err,
                           size_t errlen) {
  if (vocab_size == 0 || vocab_size > 65536 || n_train < 2 || n_val < 2) {
    snprintf(err, errlen,
             "the trigram baseline needs a vocabulary of 1..65536 and at least 2 training and "
             "2 evaluation tokens (got %u, %zu, %zu)",
             vocab_size, n_train, n_val);
    return -1;
  }
  if (check_ids("training", train, n_train, vocab_size, err, errlen) != 0 ||
      check_ids("evaluation", val, n_val, vocab_size, err, errlen) != 0)
    return -1;
  struct model m = {.W = (uint64_t)vocab_size + 1, .V = vocab_size};
  if (fit(&m, train, n_train) != 0) {
    free_model(&m);
    snprintf(err, errlen, "out of memory for the trigram counts of %zu tokens", n_train);
    return -1;
  }
  double nll = 0;
  for (size_t i = 0; i + 1 < n_val; i++)
    nll -= log(probability(&m, i ? val[i - 1] : vocab_size, val[i], val[i + 1]));
  *out = (struct eellm_trigram){.loss = nll / (double)(n_val - 1),
                                .scored = n_val - 1,
                                .discount = {m.d[0], m.d[1], m.d[2]},
                                .types = {(size_t)m.uni_types, m.bi.n, m.tri.n}};
  free_model(&m);
  return 0;
}
