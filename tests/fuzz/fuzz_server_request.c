/* eellm serve's JSON requests (cli/serve/server_api.c): eellm_api_parse, then
 * eellm_api_encode and eellm_api_answer for accepted ones, and
 * eellm_api_error for refused ones. The HTTP request head is libmicrohttpd's
 * to parse; eellm reads only the body.
 *
 * The model: context 64, 4 layers, exits on layers 1 and 2; the byte tokenizer.
 *
 * Oracles: an accepted request has 1..EELLM_API_MAX_PROMPTS non-empty prompts
 * (the strings sent), tokens_to_generate in 1..64, a threshold in (0, 1],
 * temperature in [0, 100], top_p in (0, 1], exit layers ascending, distinct
 * and each an exit or the last layer, and the documented normalisation (no
 * early exit: threshold 1, no layers; greedy: no top-k, top-p or seed); its
 * answer is valid JSON with one entry per prompt. A refused request has a
 * one-line message, and its {"error": ...} answer is valid JSON. */
#include "fuzz.h"

#include <jansson.h>
#include <math.h>

#include "cli/serve/server_api.h"
#include "eellm/tokenizer.h"

static const unsigned exits[] = {1, 2};
/* vocab 0: no scoring, so every accepted request has one generation per prompt. */
static const struct eellm_api_model model = {64, 4, exits, 2, 0, 0, 256, EELLM_GEN_RECOMPUTE};
static struct eellm_tokenizer *tok;

static void cleanup(void) { eellm_tokenizer_close(tok); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  char err[256];
  tok = eellm_tokenizer_open("byte", NULL, err, sizeof err);
  if (!tok) abort();
  atexit(cleanup);
  return 0;
}

static void check_accepted(const uint8_t *data, size_t size, struct eellm_api_request *r) {
  const struct eellm_gen_options *o = &r->o;
  FUZZ_CHECK(r->n >= 1 && r->n <= EELLM_API_MAX_PROMPTS, "%zu prompts", r->n);
  json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
  FUZZ_CHECK(json_is_object(body), "accepted a body that is not a JSON object");
  /* A list of strings, or one string (EE-LLM's client may send either); an
   * empty prompt only with add_BOS. */
  json_t *prompts = json_object_get(body, "prompts");
  int single = json_is_string(prompts);
  FUZZ_CHECK(single ? r->n == 1 : json_array_size(prompts) == r->n, "prompt count");
  for (size_t i = 0; i < r->n; i++) {
    json_t *p = single ? prompts : json_array_get(prompts, i);
    FUZZ_CHECK((r->text_lens[i] > 0 || r->add_bos) && r->text_lens[i] == json_string_length(p) &&
                   memcmp(r->texts[i], json_string_value(p), r->text_lens[i]) == 0 &&
                   r->texts[i][r->text_lens[i]] == '\0',
               "prompt %zu is not the string sent", i);
  }
  FUZZ_CHECK(o->max_tokens >= 1 && o->max_tokens <= model.context, "tokens %u", o->max_tokens);
  FUZZ_CHECK(o->threshold > 0 && o->threshold <= 1, "threshold %g", o->threshold);
  FUZZ_CHECK(o->temperature >= 0 && o->temperature <= 100, "temperature %g", o->temperature);
  FUZZ_CHECK(o->top_p > 0 && o->top_p <= 1, "top_p %g", o->top_p);
  FUZZ_CHECK(o->n_exit_layers == 0 || o->exit_layers == r->exit_layers, "exit layers pointer");
  for (size_t i = 0; i < o->n_exit_layers; i++) {
    unsigned l = o->exit_layers[i];
    FUZZ_CHECK(l == 1 || l == 2 || l == model.n_layers, "exit layer %u", l);
    FUZZ_CHECK(i == 0 || o->exit_layers[i - 1] < l, "exit layers not ascending and distinct");
  }
  if (!o->use_early_exit) FUZZ_CHECK(o->threshold == 1 && o->n_exit_layers == 0, "normalised");
  if (o->temperature == 0)
    FUZZ_CHECK(o->top_k == 0 && o->top_p == 1 && o->seed == 0 && !r->seeded, "greedy normalised");
  if (!r->seeded) FUZZ_CHECK(o->seed == 0, "seed without random_seed");
  json_t *seed = json_object_get(body, "random_seed");
  if (r->seeded) FUZZ_CHECK((json_int_t)o->seed == json_integer_value(seed), "seed");

  /* Encoding (bytes) and an answer with a made-up generation. */
  char err[512] = "";
  if (eellm_api_encode(r, &model, tok, err, sizeof err) != 0) {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "encode error not one line: '%s'", err);
    for (size_t i = 0; i < r->n; i++)
      if (r->ids[i]) FUZZ_CHECK(r->lens[i] == r->text_lens[i], "byte ids");
    json_decref(body);
    return;
  }
  struct eellm_gen_sequence *gen = calloc(r->n, sizeof *gen);
  uint16_t tokens[3] = {'h', 0xFF, 256};
  unsigned layers[3] = {1, 4, 2};
  float logprobs[3] = {-0.5f, -INFINITY, 0}, max_probs[3] = {0.6f, 1, 0.25f};
  for (size_t i = 0; i < r->n; i++) {
    FUZZ_CHECK(r->lens[i] == r->text_lens[i] && r->lens[i] < model.context, "prompt %zu ids", i);
    /* 1 to 3 tokens: every generation has one at least (the prompt leaves room). */
    gen[i] = (struct eellm_gen_sequence){tokens, layers, logprobs, 1 + i % 3, NULL, logprobs,
                                         max_probs};
  }
  char *answer = eellm_api_answer(r, gen, tok);
  FUZZ_CHECK(answer, "no answer");
  json_t *a = json_loads(answer, 0, NULL);
  FUZZ_CHECK(json_is_object(a) && json_array_size(json_object_get(a, "text")) == r->n &&
                 json_array_size(json_object_get(a, "tokens")) == r->n &&
                 json_array_size(json_object_get(a, "segments")) == r->n &&
                 json_array_size(json_object_get(a, "exit_layers")) == r->n &&
                 (!r->logprobs || json_array_size(json_object_get(a, "logprobs")) == r->n),
             "the answer is not one entry per prompt: %.200s", answer);
  /* The prompt's tokens when echoed, then the generated ones, which a stop
   * sequence or stop_on_eol may cut short. */
  int may_stop = r->n_stop_sequences > 0 || r->stop_on_eol;
  for (size_t i = 0; i < r->n; i++) {
    size_t got = json_array_size(json_array_get(json_object_get(a, "tokens"), i));
    size_t full = (r->echo_prompts ? r->lens[i] : 0) + gen[i].n;
    FUZZ_CHECK(may_stop ? got <= full : got == full, "answer %zu: token count", i);
  }
  json_decref(a);
  free(answer);
  free(gen);
  json_decref(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!tok) LLVMFuzzerInitialize(NULL, NULL);
  struct eellm_api_request r;
  char err[512] = "";
  if (eellm_api_parse((const char *)data, size, &model, &r, err, sizeof err) == 0) {
    check_accepted(data, size, &r);
  } else {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "error not one line: '%s'", err);
    char *answer = eellm_api_error(err);
    json_t *a = answer ? json_loads(answer, 0, NULL) : NULL;
    FUZZ_CHECK(json_is_string(json_object_get(a, "error")), "error answer: %s", answer);
    json_decref(a);
    free(answer);
  }
  eellm_api_request_free(&r);
  return 0;
}
