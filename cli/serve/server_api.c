/* eellm serve's JSON API: reading and checking requests, writing answers. */
#include "server_api.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <eellm/tokenizer.h>

static const char *const fields[] = {
    "prompts",     "tokens_to_generate", "use_early_exit", "early_exit_thres", "exit_layers",
    "temperature", "top_k",              "top_p",          "random_seed",      "logprobs",
    /* EE-LLM's others */
    "echo_prompts", "print_max_prob", "top_p_decay", "top_p_bound", "add_BOS",
    "stop_sequences", "prevent_newline_after_colon", "no_log", "stop_on_eol", "beam_width",
    "length_penalty",
    /* eellm's */
    "method", "draft_exit", "draft_tokens"};

/* The body being read and where its first error goes. */
struct reader {
  json_t *body;
  char *err;
  size_t errlen;
};

/* value as compact JSON, shortened past about 40 characters. */
static void describe(const json_t *value, char *out, size_t n) {
  char *s = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII |
                                  JSON_REAL_PRECISION(9));
  if (!s)
    snprintf(out, n, "?");
  else if (strlen(s) > 40)
    snprintf(out, n, "%.37s...", s);
  else
    snprintf(out, n, "%s", s);
  free(s);
}

static int field_error(struct reader *rd, const char *field, const json_t *value,
                       const char *want) {
  char shown[64];
  describe(value, shown, sizeof shown);
  snprintf(rd->err, rd->errlen, "'%s' must be %s, not %s", field, want, shown);
  return -1;
}

static int check_known_fields(struct reader *rd) {
  const char *key;
  json_t *value;
  /* EE-LLM's answers to its old fields. */
  if (json_object_get(rd->body, "max_len")) {
    snprintf(rd->err, rd->errlen, "max_len is no longer used.  Replace with tokens_to_generate");
    return -1;
  }
  if (json_object_get(rd->body, "sentences")) {
    snprintf(rd->err, rd->errlen, "sentences is no longer used.  Replace with prompts");
    return -1;
  }
  json_object_foreach(rd->body, key, value) {
    size_t i = 0;
    while (i < sizeof fields / sizeof fields[0] && strcmp(key, fields[i]) != 0) i++;
    if (i == sizeof fields / sizeof fields[0]) {
      snprintf(rd->err, rd->errlen,
               "unknown field '%.60s' (the fields: prompts, tokens_to_generate, "
               "use_early_exit, early_exit_thres, exit_layers, temperature, top_k, top_p, "
               "random_seed, logprobs, echo_prompts, print_max_prob, top_p_decay, "
               "top_p_bound, add_BOS, stop_sequences, prevent_newline_after_colon, no_log, "
               "stop_on_eol, beam_width, length_penalty, method, draft_exit, draft_tokens)",
               key);
      return -1;
    }
  }
  return 0;
}

/* Each reader leaves *out alone when the field is absent. */
static int read_integer(struct reader *rd, const char *field, json_int_t min, json_int_t max,
                        const char *want, json_int_t *out) {
  json_t *v = json_object_get(rd->body, field);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
    return field_error(rd, field, v, want);
  *out = json_integer_value(v);
  return 0;
}

static int read_number(struct reader *rd, const char *field, double low, int low_open,
                       double high, const char *want, double *out) {
  json_t *v = json_object_get(rd->body, field);
  if (!v) return 0;
  double x = json_number_value(v);
  if (!json_is_number(v) || x < low || (low_open && x == low) || x > high)
    return field_error(rd, field, v, want);
  *out = x;
  return 0;
}

static int read_bool(struct reader *rd, const char *field, int *out) {
  json_t *v = json_object_get(rd->body, field);
  if (!v) return 0;
  if (!json_is_boolean(v)) return field_error(rd, field, v, "true or false");
  *out = json_is_true(v);
  return 0;
}

static int read_prompt_list(struct reader *rd, struct eellm_api_request *r, json_t *list);

static int read_prompts(struct reader *rd, struct eellm_api_request *r) {
  json_t *list = json_object_get(rd->body, "prompts");
  if (!list) {
    snprintf(rd->err, rd->errlen, "'prompts' is missing: give a list of strings");
    return -1;
  }
  json_t *single = NULL; /* EE-LLM: a single string is a list of one */
  if (json_is_string(list)) {
    single = json_array();
    json_array_append(single, list);
    list = single;
  }
  int rc = read_prompt_list(rd, r, list);
  json_decref(single);
  return rc;
}

static int read_prompt_list(struct reader *rd, struct eellm_api_request *r, json_t *list) {
  if (!json_is_array(list) || json_array_size(list) == 0 ||
      json_array_size(list) > EELLM_API_MAX_PROMPTS) {
    char want[64];
    snprintf(want, sizeof want, "a list of 1 to %d strings", EELLM_API_MAX_PROMPTS);
    return field_error(rd, "prompts", list, want);
  }
  size_t n = json_array_size(list);
  r->texts = calloc(n, sizeof *r->texts);
  r->text_lens = calloc(n, sizeof *r->text_lens);
  r->ids = calloc(n, sizeof *r->ids);
  r->lens = calloc(n, sizeof *r->lens);
  if (!r->texts || !r->text_lens || !r->ids || !r->lens) {
    snprintf(rd->err, rd->errlen, "out of memory");
    return -1;
  }
  r->n = n;
  for (size_t i = 0; i < n; i++) {
    json_t *prompt = json_array_get(list, i);
    if (!json_is_string(prompt)) { /* empty ones: checked with add_BOS */
      char field[48];
      snprintf(field, sizeof field, "prompts[%zu]", i);
      return field_error(rd, field, prompt, "a string");
    }
    r->text_lens[i] = json_string_length(prompt);
    if (!(r->texts[i] = strdup(json_string_value(prompt)))) {
      snprintf(rd->err, rd->errlen, "out of memory");
      return -1;
    }
  }
  return 0;
}

static int compare_unsigned(const void *a, const void *b) {
  unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
  return (x > y) - (x < y);
}

/* The model's exit layers as "2, 4, " (each followed by ", "). */
static void exits_text(const struct eellm_api_model *m, char *out, size_t n) {
  out[0] = 0;
  for (size_t k = 0, at = 0; k < m->n_exits && at < n; k++)
    at += (size_t)snprintf(out + at, n - at, "%u, ", m->exits[k]);
}

/* The exit layers, ascending without repeats; each must have an exit or be the last. */
static int read_exit_layers(struct reader *rd, const struct eellm_api_model *m,
                            struct eellm_api_request *r) {
  json_t *list = json_object_get(rd->body, "exit_layers");
  if (!list) return 0;
  char layers[96], want[160];
  exits_text(m, layers, sizeof layers);
  if (!json_is_array(list)) {
    snprintf(want, sizeof want, "a list of layers with an exit (the model's: %s%u)", layers,
             m->n_layers);
    return field_error(rd, "exit_layers", list, want);
  }
  snprintf(want, sizeof want, "a layer with an exit (the model's: %s%u)", layers, m->n_layers);
  size_t n = json_array_size(list);
  if (n && !(r->exit_layers = malloc(n * sizeof *r->exit_layers))) {
    snprintf(rd->err, rd->errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_array_get(list, i);
    json_int_t layer = json_integer_value(v);
    size_t k = 0;
    while (k < m->n_exits && layer != m->exits[k]) k++;
    if (!json_is_integer(v) || (k == m->n_exits && layer != m->n_layers)) {
      char field[48];
      snprintf(field, sizeof field, "exit_layers[%zu]", i);
      return field_error(rd, field, v, want);
    }
    r->exit_layers[i] = (unsigned)layer;
  }
  if (n) qsort(r->exit_layers, n, sizeof *r->exit_layers, compare_unsigned);
  size_t kept = 0;
  for (size_t i = 0; i < n; i++)
    if (kept == 0 || r->exit_layers[kept - 1] != r->exit_layers[i])
      r->exit_layers[kept++] = r->exit_layers[i];
  r->o.exit_layers = r->exit_layers;
  r->o.n_exit_layers = kept;
  return 0;
}

static const char *const method_names[] = {"recompute", "pipeline", "speculative"};

static int read_method(struct reader *rd, struct eellm_gen_options *o) {
  json_t *v = json_object_get(rd->body, "method");
  if (!v) return 0;
  for (size_t i = 0; json_is_string(v) && i < sizeof method_names / sizeof *method_names; i++)
    if (strcmp(json_string_value(v), method_names[i]) == 0) {
      o->method = (enum eellm_gen_method)i;
      return 0;
    }
  return field_error(rd, "method", v, "\"recompute\", \"pipeline\" or \"speculative\"");
}

/* draft_exit and draft_tokens, which go with the speculative method. */
static int read_draft(struct reader *rd, const struct eellm_api_model *m,
                      struct eellm_gen_options *o) {
  json_t *exit = json_object_get(rd->body, "draft_exit");
  int speculative = o->method == EELLM_GEN_SPECULATIVE;
  if (!speculative && (exit || json_object_get(rd->body, "draft_tokens"))) {
    snprintf(rd->err, rd->errlen,
             "'draft_exit' and 'draft_tokens' go with \"method\": \"speculative\"");
    return -1;
  }
  if (!speculative) return 0;
  char layers[96], want[160];
  exits_text(m, layers, sizeof layers);
  size_t len = strlen(layers);
  if (len >= 2) layers[len - 2] = 0; /* no ", " after the last */
  snprintf(want, sizeof want, "a layer with an exit (the model's: %s)", len ? layers : "none");
  if (!exit) {
    snprintf(rd->err, rd->errlen, "\"method\": \"speculative\" needs 'draft_exit', %s", want);
    return -1;
  }
  size_t k = 0;
  while (k < m->n_exits && json_integer_value(exit) != m->exits[k]) k++;
  if (!json_is_integer(exit) || k == m->n_exits) return field_error(rd, "draft_exit", exit, want);
  json_int_t tokens = 3;
  char tokens_want[48];
  snprintf(tokens_want, sizeof tokens_want, "an integer from 1 to %d", EELLM_MAX_DRAFT_TOKENS);
  if (read_integer(rd, "draft_tokens", 1, EELLM_MAX_DRAFT_TOKENS, tokens_want, &tokens)) return -1;
  o->draft_exit_layer = m->exits[k];
  o->draft_tokens = (unsigned)tokens;
  return 0;
}

static int read_stop_sequences(struct reader *rd, struct eellm_api_request *r) {
  json_t *list = json_object_get(rd->body, "stop_sequences");
  if (!list || json_is_null(list)) return 0;
  if (!json_is_array(list)) return field_error(rd, "stop_sequences", list, "a list of strings");
  size_t n = json_array_size(list);
  if (n && !(r->stop_sequences = calloc(n, sizeof *r->stop_sequences))) {
    snprintf(rd->err, rd->errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_array_get(list, i);
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
      char field[48];
      snprintf(field, sizeof field, "stop_sequences[%zu]", i);
      return field_error(rd, field, v, "a non-empty string");
    }
    if (!(r->stop_sequences[i] = strdup(json_string_value(v)))) {
      snprintf(rd->err, rd->errlen, "out of memory");
      return -1;
    }
    r->n_stop_sequences = i + 1;
  }
  return 0;
}

static int read_options(struct reader *rd, const struct eellm_api_model *m,
                        struct eellm_api_request *r) {
  json_int_t tokens = 64, top_k = 0, seed = -1, beam_width = 0;
  double threshold = m->threshold > 0 ? m->threshold : 1, temperature = 1, top_p = 1;
  double top_p_decay = 0, top_p_bound = 0, length_penalty = 1;
  int use_early_exit = 0, logprobs = 0, newline = 0;
  struct eellm_gen_options *o = &r->o;
  o->method = m->method;
  char tokens_want[80];
  snprintf(tokens_want, sizeof tokens_want,
           "an integer from 0 (scoring) to %u (the context)", m->context);
  if (read_integer(rd, "tokens_to_generate", 0, m->context, tokens_want, &tokens) ||
      read_bool(rd, "use_early_exit", &use_early_exit) ||
      read_number(rd, "early_exit_thres", 0, 1, 1, "a number in (0, 1]", &threshold) ||
      read_exit_layers(rd, m, r) ||
      read_number(rd, "temperature", 0, 0, 100, "a number in [0, 100]", &temperature) ||
      read_integer(rd, "top_k", 0, UINT32_MAX, "an integer >= 0", &top_k) ||
      read_number(rd, "top_p", 0, 0, 1, "a number in [0, 1] (0 or 1: off)", &top_p) ||
      read_integer(rd, "random_seed", 0, INT64_MAX, "an integer >= 0", &seed) ||
      read_bool(rd, "logprobs", &logprobs) || read_bool(rd, "echo_prompts", &r->echo_prompts) ||
      read_bool(rd, "print_max_prob", &r->print_max_prob) ||
      read_number(rd, "top_p_decay", 0, 0, 1, "a number in [0, 1]", &top_p_decay) ||
      read_number(rd, "top_p_bound", 0, 1, 1, "a number in (0, 1]", &top_p_bound) ||
      read_bool(rd, "add_BOS", &r->add_bos) || read_stop_sequences(rd, r) ||
      read_bool(rd, "prevent_newline_after_colon", &newline) ||
      read_bool(rd, "no_log", &r->no_log) || read_bool(rd, "stop_on_eol", &r->stop_on_eol) ||
      read_integer(rd, "beam_width", 1, INT64_MAX, "an integer >= 1", &beam_width) ||
      read_number(rd, "length_penalty", -1e30, 0, 1e30, "a number", &length_penalty) ||
      read_method(rd, o) || read_draft(rd, m, o))
    return -1;
  /* EE-LLM's: the decay needs a top_p, which it also applies at 1 (then 1 * decay, ...). */
  if ((json_object_get(rd->body, "top_p_decay") || json_object_get(rd->body, "top_p_bound")) &&
      !(json_object_get(rd->body, "top_p") && top_p > 0)) {
    snprintf(rd->err, rd->errlen, "'top_p_decay' and 'top_p_bound' need a 'top_p' in (0, 1]");
    return -1;
  }
  if (top_p_bound > top_p) {
    snprintf(rd->err, rd->errlen, "'top_p_bound' (%g) must not exceed 'top_p' (%g)",
             top_p_bound, top_p);
    return -1;
  }
  if (beam_width) {
    snprintf(rd->err, rd->errlen,
             "'beam_width': beam search is not supported (EE-LLM's server ignores it too); "
             "leave it out");
    return -1;
  }
  (void)length_penalty; /* EE-LLM: beam search only */
  for (size_t i = 0; i < r->n; i++)
    if (r->text_lens[i] == 0 && !r->add_bos) {
      snprintf(rd->err, rd->errlen, "'prompts[%zu]' is empty: empty prompts need add_BOS true",
               i);
      return -1;
    }
  o->max_tokens = (unsigned)tokens;
  o->use_early_exit = use_early_exit && o->method != EELLM_GEN_SPECULATIVE;
  o->threshold = (float)threshold;
  o->temperature = (float)temperature;
  o->top_k = (unsigned)top_k;
  o->top_p = top_p > 0 ? (float)top_p : 1;
  o->top_p_decay = (float)top_p_decay;
  o->top_p_bound = (float)top_p_bound;
  o->prevent_newline_after_colon = newline;
  o->seed = seed >= 0 ? (uint64_t)seed : 0;
  r->seeded = seed >= 0;
  r->logprobs = logprobs;
  if (tokens == 0) { /* scoring: the prompt's log-probabilities under the full model */
    if (!m->vocab) {
      snprintf(rd->err, rd->errlen, "'tokens_to_generate': 0 (scoring) is not available here");
      return -1;
    }
    r->scoring = 1;
    r->vocab = m->vocab;
    r->logprobs = 1; /* EE-LLM: tokens_to_generate 0 implies logprobs */
    o->max_tokens = 1;
    o->use_early_exit = 0;
    o->temperature = 0;
    o->keep_logits = 1;
    o->prevent_newline_after_colon = 0; /* EE-LLM's scoring has no ban either */
    o->method = EELLM_GEN_RECOMPUTE;
    o->draft_exit_layer = o->draft_tokens = 0;
  }
  if (!o->use_early_exit) {
    o->threshold = 1;
    o->n_exit_layers = 0;
  }
  if (o->temperature == 0 || o->top_p_decay == 1 || o->top_p_bound >= o->top_p)
    o->top_p_decay = o->top_p_bound = 0; /* top_p stays as it is */
  if (o->temperature == 0) {
    o->top_k = 0;
    o->top_p = 1;
    o->seed = 0;
    r->seeded = 0;
  }
  return 0;
}

/* Control characters in err become '?', so that the message stays one line (the
 * server logs it): jansson quotes the text near a syntax error as it is, and an
 * unknown key may hold any character. */
static void one_line(char *err, size_t errlen) {
  for (char *c = err; errlen && *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

int eellm_api_parse(const char *body, size_t len, const struct eellm_api_model *m,
                    struct eellm_api_request *r, char *err, size_t errlen) {
  memset(r, 0, sizeof *r);
  json_error_t jerr;
  json_t *json = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!json) {
    snprintf(err, errlen, "malformed JSON at line %d, column %d: %s", jerr.line, jerr.column,
             jerr.text);
    one_line(err, errlen);
    return -1;
  }
  struct reader rd = {json, err, errlen};
  int rc = -1;
  if (!json_is_object(json))
    snprintf(err, errlen, "the body must be a JSON object");
  else if (check_known_fields(&rd) == 0 && read_prompts(&rd, r) == 0 &&
           read_options(&rd, m, r) == 0)
    rc = 0;
  json_decref(json);
  if (rc) one_line(err, errlen);
  return rc;
}

int eellm_api_encode(struct eellm_api_request *r, const struct eellm_api_model *m,
                     struct eellm_tokenizer *tok, char *err, size_t errlen) {
  for (size_t i = 0; i < r->n; i++) {
    struct eellm_ids ids = {0};
    if ((r->add_bos && eellm_ids_push(&ids, m->bos) != 0) ||
        eellm_tokenizer_encode(tok, r->texts[i], r->text_lens[i], &ids) != 0) {
      free(ids.v);
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    r->ids[i] = ids.v;
    r->lens[i] = ids.n;
    if (ids.n >= m->context) {
      snprintf(err, errlen,
               "'prompts[%zu]' is %zu tokens, leaving no room to generate in the model's "
               "context of %u",
               i, ids.n, m->context);
      return -1;
    }
  }
  /* What the generator runs. */
  size_t runs = 0;
  for (size_t i = 0; i < r->n; i++) runs += r->scoring ? (r->lens[i] ? r->lens[i] - 1 : 0) : 1;
  r->run_ids = malloc((runs ? runs : 1) * sizeof *r->run_ids);
  r->run_lens = malloc((runs ? runs : 1) * sizeof *r->run_lens);
  if (!r->run_ids || !r->run_lens) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0, k = 0; i < r->n; i++) {
    if (!r->scoring) {
      r->run_ids[k] = r->ids[i];
      r->run_lens[k++] = r->lens[i];
    } else {
      for (size_t t = 1; t < r->lens[i]; t++) {
        r->run_ids[k] = r->ids[i];
        r->run_lens[k++] = t;
      }
    }
  }
  r->n_runs = runs;
  return 0;
}

void eellm_api_request_free(struct eellm_api_request *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->texts[i]);
    free(r->ids[i]);
  }
  free(r->texts);
  free(r->text_lens);
  free(r->ids);
  free(r->lens);
  free(r->exit_layers);
  for (size_t i = 0; i < r->n_stop_sequences; i++) free(r->stop_sequences[i]);
  free(r->stop_sequences);
  free(r->run_ids);
  free(r->run_lens);
  memset(r, 0, sizeof *r);
}

/* Length of the valid UTF-8 character starting at s (n bytes left), 0 if none does. */
static size_t utf8_char(const unsigned char *s, size_t n) {
  size_t len;
  uint32_t code;
  if (s[0] < 0x80) return 1;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) len = 2, code = s[0] & 0x1F;
  else if (s[0] >= 0xE0 && s[0] <= 0xEF) len = 3, code = s[0] & 0x0F;
  else if (s[0] >= 0xF0 && s[0] <= 0xF4) len = 4, code = s[0] & 0x07;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    code = code << 6 | (s[i] & 0x3F);
  }
  if (len == 3 && (code < 0x800 || (code >= 0xD800 && code <= 0xDFFF))) return 0;
  if (len == 4 && (code < 0x10000 || code > 0x10FFFF)) return 0;
  return len;
}

/* A JSON string of n bytes, each byte that starts no valid UTF-8 character as U+FFFD. */
static json_t *text_value(const char *s, size_t n) {
  unsigned char *clean = malloc(3 * n + 1);
  if (!clean) return NULL;
  size_t out = 0;
  for (size_t i = 0; i < n;) {
    size_t len = utf8_char((const unsigned char *)s + i, n - i);
    if (len) {
      memcpy(clean + out, s + i, len);
      out += len;
      i += len;
    } else {
      memcpy(clean + out, "\xEF\xBF\xBD", 3);
      out += 3;
      i++;
    }
  }
  json_t *value = json_stringn((const char *)clean, out);
  free(clean);
  return value;
}

/* The answer's lists, one entry per prompt. */
struct answer {
  json_t *text, *segments, *tokens, *exit_layers, *logprobs, *max_probs;
};

/* Appends the text of n ids to text. A model's vocabulary may be wider than its tokenizer's
 * (padded, as Megatron-LM pads it): the ids past the tokenizer's have no text, as in
 * `eellm generate`. -1: out of memory. */
static int decode_text(const struct eellm_tokenizer *tok, const uint16_t *ids, size_t n,
                       struct eellm_bytes *text) {
  uint32_t known = eellm_tokenizer_vocab_size(tok);
  for (size_t t = 0; t < n; t++)
    if (ids[t] < known && eellm_tokenizer_decode(tok, &ids[t], 1, text) != 0) return -1;
  return 0;
}

static int add_tokens(json_t *segments, json_t *tokens, const uint16_t *ids, size_t n,
                      const struct eellm_tokenizer *tok) {
  for (size_t t = 0; t < n; t++) {
    struct eellm_bytes piece = {0};
    int rc = decode_text(tok, &ids[t], 1, &piece);
    rc = rc || json_array_append_new(segments, text_value(piece.v, piece.n)) ||
         json_array_append_new(tokens, json_integer(ids[t]));
    free(piece.v);
    if (rc) return -1;
  }
  return 0;
}

static json_t *number_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

/* How many of gen's tokens to keep: through the first one whose text completes a stop
 * sequence (or, stop_on_eol, holds a newline), all when none does. The generator ran on
 * past it; what it made before does not depend on what came after, so the answer is the
 * one stopping there would give. -1: out of memory. */
static long kept_tokens(const struct eellm_api_request *r, const struct eellm_gen_sequence *gen,
                        const struct eellm_tokenizer *tok) {
  if (!r->n_stop_sequences && !r->stop_on_eol) return (long)gen->n;
  struct eellm_bytes text = {0};
  size_t *ends = malloc((gen->n ? gen->n : 1) * sizeof *ends);
  long keep = (long)gen->n;
  if (!ends) return -1;
  for (size_t t = 0; t < gen->n && keep >= 0; t++) {
    if (decode_text(tok, &gen->tokens[t], 1, &text) != 0) keep = -1;
    ends[t] = text.n;
  }
  size_t stop = SIZE_MAX; /* the byte where the first stop sequence ends */
  for (size_t k = 0; keep >= 0 && k < r->n_stop_sequences + (r->stop_on_eol != 0); k++) {
    const char *seq = k < r->n_stop_sequences ? r->stop_sequences[k] : "\n";
    size_t len = strlen(seq);
    for (size_t at = 0; at + len <= text.n && at + len < stop; at++)
      if (memcmp(text.v + at, seq, len) == 0) {
        stop = at + len;
        break;
      }
  }
  if (keep >= 0 && stop != SIZE_MAX)
    for (size_t t = 0; t < gen->n; t++)
      if (ends[t] >= stop) {
        keep = (long)t + 1;
        break;
      }
  free(ends);
  free(text.v);
  return keep;
}

static int add_sequence(struct answer *a, const struct eellm_api_request *r, size_t i,
                        const struct eellm_gen_sequence *gen, const struct eellm_tokenizer *tok) {
  struct eellm_bytes text = {0};
  json_t *segments = json_array(), *tokens = json_array(), *exits = json_array();
  json_t *logprobs = r->logprobs ? json_array() : NULL;
  json_t *max_probs = r->print_max_prob ? json_array() : NULL;
  long kept = kept_tokens(r, gen, tok);
  size_t n = kept < 0 ? 0 : (size_t)kept;
  int rc = kept < 0 || decode_text(tok, gen->tokens, n, &text);
  size_t prompt_len = r->echo_prompts ? r->text_lens[i] : 0;
  if (rc == 0) {
    char *whole = malloc(prompt_len + text.n + 1);
    if (whole) {
      memcpy(whole, r->texts[i], prompt_len);
      memcpy(whole + prompt_len, text.v, text.n);
    }
    rc = !whole || json_array_append_new(a->text, text_value(whole, prompt_len + text.n));
    free(whole);
  }
  free(text.v);
  if (r->echo_prompts) rc = rc || add_tokens(segments, tokens, r->ids[i], r->lens[i], tok);
  rc = rc || add_tokens(segments, tokens, gen->tokens, n, tok);
  /* Echoed, logprobs[k] is that of segments[k + 1], as EE-LLM's: the prompt's are null. */
  if (logprobs && r->echo_prompts)
    for (size_t t = 1; t < r->lens[i] && rc == 0; t++)
      rc = json_array_append_new(logprobs, json_null());
  for (size_t t = 0; t < n && rc == 0; t++) {
    rc = json_array_append_new(exits, json_integer(gen->exit_layers[t]));
    /* A sequence without the raw figures (not from the generator) shows null. */
    if (logprobs)
      rc = rc || json_array_append_new(
                     logprobs, number_or_null(gen->raw_logprobs ? gen->raw_logprobs[t] : NAN));
    if (max_probs)
      rc = rc || json_array_append_new(
                     max_probs, number_or_null(gen->max_probs ? gen->max_probs[t] : NAN));
  }
  rc = json_array_append_new(a->segments, segments) || rc;
  rc = json_array_append_new(a->tokens, tokens) || rc;
  rc = json_array_append_new(a->exit_layers, exits) || rc;
  if (logprobs) rc = json_array_append_new(a->logprobs, logprobs) || rc;
  if (max_probs) rc = json_array_append_new(a->max_probs, max_probs) || rc;
  return rc ? -1 : 0;
}

/* Scoring: the prompt echoed, and for each token after the first its log-probability
 * under the final head given the ones before it: from run k's kept logits. */
static int add_score(struct answer *a, const struct eellm_api_request *r, size_t i,
                     const struct eellm_gen_sequence *runs, unsigned vocab,
                     const struct eellm_tokenizer *tok) {
  json_t *segments = json_array(), *tokens = json_array(), *logprobs = json_array();
  int rc = json_array_append_new(a->text, text_value(r->texts[i], r->text_lens[i])) ||
           add_tokens(segments, tokens, r->ids[i], r->lens[i], tok);
  for (size_t t = 1; t < r->lens[i] && rc == 0; t++) {
    const struct eellm_gen_sequence *run = &runs[t - 1];
    uint16_t next = r->ids[i][t];
    if (run->n < 1 || !run->logits || next >= vocab) {
      rc = -1;
      break;
    }
    const float *z = run->logits;
    double max = z[0], sum = 0;
    for (unsigned j = 1; j < vocab; j++) max = z[j] > max ? z[j] : max;
    for (unsigned j = 0; j < vocab; j++) sum += exp((double)z[j] - max);
    rc = json_array_append_new(logprobs, number_or_null((double)z[next] - max - log(sum)));
  }
  rc = json_array_append_new(a->segments, segments) || rc;
  rc = json_array_append_new(a->tokens, tokens) || rc;
  rc = json_array_append_new(a->exit_layers, json_array()) || rc;
  rc = json_array_append_new(a->logprobs, logprobs) || rc;
  if (a->max_probs) rc = json_array_append_new(a->max_probs, json_array()) || rc;
  return rc ? -1 : 0;
}

char *eellm_api_answer(const struct eellm_api_request *r, const struct eellm_gen_sequence *out,
                       const struct eellm_tokenizer *tok) {
  struct answer a = {json_array(), json_array(), json_array(), json_array(),
                     r->logprobs ? json_array() : NULL, r->print_max_prob ? json_array() : NULL};
  int rc = 0;
  for (size_t i = 0, k = 0; i < r->n && rc == 0; i++) {
    if (r->scoring) {
      rc = add_score(&a, r, i, out + k, r->vocab, tok);
      k += r->lens[i] ? r->lens[i] - 1 : 0;
    } else {
      rc = add_sequence(&a, r, i, &out[i], tok);
    }
  }
  json_t *answer = json_object();
  rc = json_object_set_new(answer, "text", a.text) || rc;
  rc = json_object_set_new(answer, "segments", a.segments) || rc;
  /* EE-LLM's key is always there, null when not asked for. */
  rc = json_object_set_new(answer, "logprobs", a.logprobs ? a.logprobs : json_null()) || rc;
  rc = json_object_set_new(answer, "requst_time", json_real(r->request_time)) || rc;
  rc = json_object_set_new(answer, "tokens", a.tokens) || rc;
  rc = json_object_set_new(answer, "exit_layers", a.exit_layers) || rc;
  if (a.max_probs) rc = json_object_set_new(answer, "max_probs", a.max_probs) || rc;
  char *json = rc ? NULL : json_dumps(answer, JSON_COMPACT | JSON_REAL_PRECISION(9));
  json_decref(answer);
  return json;
}

char *eellm_api_error(const char *message) {
  json_t *error = json_object();
  char *json = NULL;
  if (json_object_set_new(error, "error", text_value(message, strlen(message))) == 0)
    json = json_dumps(error, JSON_COMPACT);
  json_decref(error);
  return json;
}
