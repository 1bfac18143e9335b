/* Continuous batching (eellm_gen_session, include/eellm/generate.h) on the two
 * tiny models of test_generate.c, under every method, exits on (speculative:
 * the exit at layer 1 drafting 3 tokens a round, a step a round):
 * - prompts joining a running batch at different steps, into the slots that
 *   finished ones leave, each with its own max_tokens, give what each gives
 *   alone with eellm_generate (greedy: same tokens and exits; speculative,
 *   also the full model's tokens, exits off);
 * - sampled, a sequence seeded (seed, i) gives what eellm_generate gives the
 *   prompt at index i of a call with that seed, whenever it joins;
 * - two sessions with different options share the generator's slots, stepped
 *   in turn, and each sequence still gives what it gives alone;
 * - no free slot, a bad prompt, eellm_generate beside an open session: errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eellm.h"
#include "eellm/generate.h"
#include "testutil.h"

#define MAX_BATCH 3
#define N_PROMPTS 6

static const char *texts[N_PROMPTS] = {"The", "United States", "Fellow citizens of",
                                       "We hold", "In the year", "Once upon"};
static const unsigned max_tokens[N_PROMPTS] = {12, 4, 9, 2, 7, 5};

struct fixture {
  char name[64];
  char ckpt[256];
  struct eellm_generator *gen;
  uint16_t ids[N_PROMPTS][32];
  const uint16_t *prompts[N_PROMPTS];
  size_t lens[N_PROMPTS];
};

static void fixture_open(struct fixture *f, const char *spec_path, uint64_t seed) {
  char err[512];
  Eellm__Model *spec = eellm_model_spec_load(spec_path, err, sizeof err);
  if (!spec) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  eellm_model *m = eellm_model_create(spec, 1, spec->context_length, err, sizeof err);
  eellm_model_spec_free(spec);
  if (!m) exit(1);
  snprintf(f->name, sizeof f->name, "%s", eellm_model_spec(m)->name);
  eellm_model_init(m, seed);
  eellm_model_set_tokenizer(m, "byte");
  snprintf(f->ckpt, sizeof f->ckpt, "%s/%s.safetensors", tu_tempdir(), f->name);
  if (eellm_model_save(m, f->ckpt, err, sizeof err) != 0 ||
      !(f->gen = eellm_generator_open(f->ckpt, NULL, MAX_BATCH, err, sizeof err))) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  eellm_model_destroy(m);
  for (size_t i = 0; i < N_PROMPTS; i++) {
    f->lens[i] = strlen(texts[i]);
    for (size_t k = 0; k < f->lens[i]; k++) f->ids[i][k] = (unsigned char)texts[i][k];
    f->prompts[i] = f->ids[i];
  }
}

static struct eellm_gen_options options(enum eellm_gen_method method, float threshold,
                                        float temperature) {
  return (struct eellm_gen_options){.max_tokens = 16, .use_early_exit = 1, .threshold = threshold,
                                    .top_p = 1, .stop_at_eot = 1, .method = method,
                                    .temperature = temperature, .top_k = 40, .seed = 5,
                                    .draft_exit_layer = 1, .draft_tokens = 3};
}

static const char *method_name(enum eellm_gen_method method) {
  return method == EELLM_GEN_PIPELINE      ? "pipeline"
         : method == EELLM_GEN_SPECULATIVE ? "speculative"
                                           : "recompute";
}

static int same_output(const struct eellm_gen_sequence *a, const struct eellm_gen_sequence *b) {
  if (a->n != b->n) return 0;
  for (size_t i = 0; i < a->n; i++)
    if (a->tokens[i] != b->tokens[i] || a->exit_layers[i] != b->exit_layers[i] ||
        fabs(a->logprobs[i] - b->logprobs[i]) > 1e-4)
      return 0;
  return 1;
}

/* Prompt i through eellm_generate: alone when greedy; sampled, at index i of a
 * call of prompts 0..i (its stream i), the others generating one token. */
static void reference(struct fixture *f, const struct eellm_gen_options *base, size_t i,
                      struct eellm_gen_sequence *out) {
  struct eellm_gen_options o = *base;
  o.max_tokens = max_tokens[i];
  char err[512];
  struct eellm_gen_sequence all[N_PROMPTS];
  size_t first = base->temperature > 0 ? 0 : i, n = i + 1 - first;
  /* More than MAX_BATCH prompts cannot share a call: stream i of seed s is
   * also stream i - first of seed s' only by chance, so sampled references
   * stop at index MAX_BATCH - 1. */
  if (n > MAX_BATCH) abort();
  if (eellm_generate(f->gen, f->prompts + first, f->lens + first, n, &o, all, err, sizeof err)) {
    fprintf(stderr, "eellm_generate: %s\n", err);
    exit(1);
  }
  *out = all[n - 1];
  for (size_t k = 0; k + 1 < n; k++) eellm_gen_sequence_free(&all[k]);
}

/* Runs prompts 0..n-1 through one session: two join at once, the others
 * whenever a slot is free, one more step apart each. */
static int run_session(struct fixture *f, const struct eellm_gen_options *o, size_t n,
                       struct eellm_gen_sequence *out) {
  char err[512];
  struct eellm_gen_session *s = eellm_gen_session_open(f->gen, o, err, sizeof err);
  if (!s) {
    fprintf(stderr, "eellm_gen_session_open: %s\n", err);
    exit(1);
  }
  long owner[MAX_BATCH];
  size_t next = 0, done = 0, steps = 0;
  while (done < n) {
    if (next < n && eellm_generator_free_slots(f->gen) > 0 && (next < 2 || steps % 2 == 1)) {
      long slot = eellm_gen_session_add(s, f->prompts[next], f->lens[next], max_tokens[next],
                                        o->seed, next, err, sizeof err);
      if (slot < 0) {
        fprintf(stderr, "eellm_gen_session_add: %s\n", err);
        exit(1);
      }
      owner[slot] = (long)next++;
      continue;
    }
    eellm_gen_session_step(s);
    steps++;
    struct eellm_gen_sequence q;
    long slot;
    while ((slot = eellm_gen_session_take(s, &q)) >= 0) {
      out[owner[slot]] = q;
      done++;
    }
    if (steps > 200) abort();
  }
  eellm_gen_session_close(s);
  return (int)steps;
}

static void test_joining(struct fixture *f, enum eellm_gen_method method, float temperature) {
  struct eellm_gen_options o = options(method, 0.8f, temperature);
  size_t n = temperature > 0 ? MAX_BATCH : N_PROMPTS;
  struct eellm_gen_options full = o;
  full.method = EELLM_GEN_RECOMPUTE;
  full.use_early_exit = 0;
  int lossless = method == EELLM_GEN_SPECULATIVE && temperature == 0;
  struct eellm_gen_sequence got[N_PROMPTS], want;
  int steps = run_session(f, &o, n, got), equal = 1;
  size_t early = 0;
  for (size_t i = 0; i < n; i++) {
    reference(f, &o, i, &want);
    equal &= same_output(&got[i], &want);
    if (lossless) {
      eellm_gen_sequence_free(&want);
      reference(f, &full, i, &want);
      equal &= same_output(&got[i], &want);
    }
    for (size_t k = 0; k < want.n; k++) early += want.exit_layers[k] < eellm_generator_n_layers(f->gen);
    eellm_gen_sequence_free(&want);
    eellm_gen_sequence_free(&got[i]);
  }
  char what[200];
  snprintf(what, sizeof what,
           "%s %s, %s: %zu prompts joining a session of %d slots over %d steps = eellm_generate "
           "(%zu early exits)%s",
           f->name, method_name(method), temperature > 0 ? "sampled" : "greedy", n, MAX_BATCH,
           steps, early, lossless ? " = the full model's tokens" : "");
  printf("  %s\n", what);
  tu_ok(equal, what);
}

/* Two sessions (exits on, exits off; speculative: beside pipeline with exits on)
 * on one generator's slots, stepped in turn. */
static void test_two_sessions(struct fixture *f, enum eellm_gen_method method) {
  /* Speculative rounds beside a pipeline session, whose catch-up outlasts its steps. */
  int speculative = method == EELLM_GEN_SPECULATIVE;
  struct eellm_gen_options on = options(method, 0.8f, 0);
  struct eellm_gen_options off = options(speculative ? EELLM_GEN_PIPELINE : method, 1, 0);
  if (speculative)
    off.threshold = 0.8f;
  else
    off.use_early_exit = 0;
  char err[512];
  struct eellm_gen_session *a = eellm_gen_session_open(f->gen, &on, err, sizeof err);
  struct eellm_gen_session *b = eellm_gen_session_open(f->gen, &off, err, sizeof err);
  if (!a || !b) exit(1);
  struct eellm_gen_sequence got[4], want, q;
  long owner[MAX_BATCH];
  size_t order[4] = {0, 1, 2, 4}; /* a, b, a, b */
  size_t next = 0, done = 0, rounds = 0;
  while (done < 4 && rounds++ < 100) {
    while (next < 4 && eellm_generator_free_slots(f->gen) > 0) {
      struct eellm_gen_session *s = next % 2 ? b : a;
      size_t i = order[next];
      long slot = eellm_gen_session_add(s, f->prompts[i], f->lens[i], max_tokens[i], 0, 0, err,
                                        sizeof err);
      if (slot < 0) exit(1);
      owner[slot] = (long)next++;
    }
    eellm_gen_session_step(a);
    eellm_gen_session_step(b);
    long slot;
    while ((slot = eellm_gen_session_take(a, &q)) >= 0) got[owner[slot]] = q, done++;
    while ((slot = eellm_gen_session_take(b, &q)) >= 0) got[owner[slot]] = q, done++;
  }
  tu_ok(eellm_gen_session_add(a, f->prompts[0], f->lens[0], 4, 0, 0, err, sizeof err) >= 0 &&
            eellm_gen_session_add(b, f->prompts[0], f->lens[0], 4, 0, 0, err, sizeof err) >= 0 &&
            eellm_gen_session_add(a, f->prompts[0], f->lens[0], 4, 0, 0, err, sizeof err) >= 0 &&
            eellm_gen_session_add(b, f->prompts[0], f->lens[0], 4, 0, 0, err, sizeof err) < 0 &&
            strstr(err, "slots"),
        "sessions: a fourth sequence on three slots is refused");
  eellm_gen_session_close(a);
  eellm_gen_session_close(b);
  int equal = done == 4;
  for (size_t k = 0; equal && k < 4; k++) {
    struct eellm_gen_options o = k % 2 ? off : on;
    o.max_tokens = max_tokens[order[k]];
    struct eellm_gen_sequence *p = &want;
    if (eellm_generate(f->gen, &f->prompts[order[k]], &f->lens[order[k]], 1, &o, p, err,
                       sizeof err) != 0)
      exit(1);
    equal &= same_output(&got[k], &want);
    eellm_gen_sequence_free(&want);
  }
  for (size_t k = 0; k < done; k++) eellm_gen_sequence_free(&got[k]);
  char what[160];
  snprintf(what, sizeof what, "%s %s: two sessions (%s) stepped in turn = alone", f->name,
           method_name(method), speculative ? "beside pipeline, exits on" : "exits on, off");
  printf("  %s\n", what);
  tu_ok(equal, what);
  tu_ok(eellm_generator_free_slots(f->gen) == MAX_BATCH, "sessions closed: every slot free");
}

static void test_errors(struct fixture *f) {
  struct eellm_gen_options o = options(EELLM_GEN_RECOMPUTE, 0.8f, 0);
  char err[512] = "";
  struct eellm_gen_session *s = eellm_gen_session_open(f->gen, &o, err, sizeof err);
  uint16_t bad[2] = {1, 60000};
  tu_ok(eellm_gen_session_add(s, bad, 2, 4, 0, 0, err, sizeof err) < 0 && strstr(err, "vocabulary"),
        "session: a token outside the vocabulary is refused");
  tu_ok(eellm_gen_session_add(s, bad, 0, 4, 0, 0, err, sizeof err) < 0, "session: an empty prompt is refused");
  struct eellm_gen_sequence out;
  tu_ok(eellm_generate(f->gen, f->prompts, f->lens, 1, &o, &out, err, sizeof err) != 0 &&
            strstr(err, "session"),
        "eellm_generate beside an open session: refused");
  tu_ok(eellm_gen_session_step(s) == 0 && eellm_gen_session_take(s, &out) < 0,
        "an empty session: no step, nothing to take");
  eellm_gen_session_add(s, f->prompts[0], f->lens[0], 3, 0, 0, err, sizeof err);
  eellm_gen_session_step(s);
  eellm_gen_session_close(s); /* with a sequence unfinished */
  tu_ok(eellm_generator_free_slots(f->gen) == MAX_BATCH, "closing drops unfinished sequences");
  o.threshold = 2;
  tu_ok(!eellm_gen_session_open(f->gen, &o, err, sizeof err) && strstr(err, "threshold"),
        "session: bad options are refused");
}

static void run(const char *spec, uint64_t seed, int errors) {
  struct fixture f = {0};
  fixture_open(&f, spec, seed);
  static const enum eellm_gen_method methods[] = {EELLM_GEN_RECOMPUTE, EELLM_GEN_PIPELINE,
                                                  EELLM_GEN_SPECULATIVE};
  for (int m = 0; m < 3; m++) {
    test_joining(&f, methods[m], 0);
    test_joining(&f, methods[m], 0.9f);
    test_two_sessions(&f, methods[m]);
  }
  if (errors) test_errors(&f);
  eellm_generator_close(f.gen);
  unlink(f.ckpt);
}

int main(void) {
  tu_start();
  run("tests/specs/gen_gpt.txtpb", 3, 1);
  run("tests/specs/gen_llama.txtpb", 4, 0);
  return tu_finish();
}
