/* The JSON API of eellm serve (EE-LLM's): requests read and checked, answers written.
 *
 * Request (PUT /api), every field but prompts optional:
 *   prompts             non-empty list of non-empty strings (at most EELLM_API_MAX_PROMPTS)
 *   tokens_to_generate  integer from 1 to the context, default 64
 *   use_early_exit      boolean, default false
 *   early_exit_thres    number in (0, 1], default 1 (1: every token goes through the final head)
 *   exit_layers         list of the model's exit layers allowed to fire, default [] (all);
 *                       the final layer may be listed too (the final head always may)
 *   temperature         number in [0, 100], default 1 (0: greedy)
 *   top_k               integer >= 0, default 0 (off)
 *   top_p               number in (0, 1], default 1 (off)
 *   random_seed         integer >= 0, default: one the server picks
 *   logprobs            boolean, default false
 * Unknown fields are errors.
 *
 * Answer, one entry per prompt:
 *   text         the prompt followed by the generated text
 *   segments     each token of prompt and generation as a string
 *   tokens       the ids of prompt and generation
 *   exit_layers  for each generated token, the layer whose exit produced it (n_layers: final)
 *   logprobs     for each generated token, its log-probability (only when asked)
 * Generation stops early after the end-of-text token (kept) or when the context is full;
 * a prompt must leave room for one token. Bytes that are not valid UTF-8 (a
 * token holding part of a character) appear as U+FFFD. */
#ifndef EELLM_CLI_SERVER_API_H
#define EELLM_CLI_SERVER_API_H

#include <stddef.h>
#include <stdint.h>

#include <eellm/generate.h>

#define EELLM_API_MAX_PROMPTS 1024

struct eellm_tokenizer;

/* What a request is checked against. */
struct eellm_api_model {
  unsigned context;           /* tokens */
  unsigned n_layers;
  const unsigned *exits;      /* the layers that have an exit, ascending */
  size_t n_exits;
  float threshold;            /* early_exit_thres when a request gives none (0: 1) */
};

struct eellm_api_request {
  size_t n;                   /* prompts */
  char **texts;               /* as sent, NUL-terminated */
  size_t *text_lens;
  uint16_t **ids;             /* encoded by eellm_api_encode */
  size_t *lens;
  struct eellm_gen_options o; /* o.exit_layers points into exit_layers */
  unsigned *exit_layers;
  int seeded;                 /* random_seed given */
  int logprobs;
};

/* Reads and checks a request body into r (zeroed first). 0, or -1 with a message naming
 * the field and its value; either way free r with eellm_api_request_free. Options that
 * cannot change the output are normalised (no early exit: threshold 1 and no exit
 * layers; greedy: no top-k, top-p or seed), so that equal options mean equal outputs. */
int eellm_api_parse(const char *body, size_t len, const struct eellm_api_model *m,
                    struct eellm_api_request *r, char *err, size_t errlen);
/* Encodes the prompts and checks that each leaves room in the context to generate.
 * 0, or -1 with a message. Not thread-safe for one tokenizer. */
int eellm_api_encode(struct eellm_api_request *r, const struct eellm_api_model *m,
                     struct eellm_tokenizer *tok, char *err, size_t errlen);
void eellm_api_request_free(struct eellm_api_request *r);

/* The answer to r for its generations out[r->n], as JSON text (malloc'd); NULL when out
 * of memory or a token is outside the vocabulary. */
char *eellm_api_answer(const struct eellm_api_request *r, const struct eellm_gen_sequence *out,
                       const struct eellm_tokenizer *tok);
/* {"error": message} as JSON text (malloc'd), or NULL when out of memory. */
char *eellm_api_error(const char *message);

#endif
