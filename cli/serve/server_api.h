/* The JSON API of eellm serve (EE-LLM's): requests read and checked, answers written.
 *
 * Request (PUT /api), every field but prompts optional; EE-LLM's server's fields:
 *   prompts             a string, or a non-empty list of strings (at most
 *                       EELLM_API_MAX_PROMPTS); empty ones need add_BOS
 *   tokens_to_generate  integer from 0 to the context, default 64; 0: scoring (below)
 *   use_early_exit      boolean, default false (EE-LLM: on whenever the key is present,
 *                       even false; here its value counts)
 *   early_exit_thres    number in (0, 1], default the checkpoint's calibrated one, else 1
 *                       (1: every token goes through the final head)
 *   exit_layers         list of the model's exit layers allowed to fire, default [] (all);
 *                       the final layer may be listed too (the final head always may)
 *   temperature         number in [0, 100], default 1 (0: greedy; EE-LLM's default is 0)
 *   top_k               integer >= 0, default 0 (off)
 *   top_p               number in [0, 1], default 1 (0 or 1: off)
 *   top_p_decay, top_p_bound  numbers in [0, 1] and (0, top_p], need a top_p in (0, 1]:
 *                       after each token of a prompt top_p = top_p * decay, not under the
 *                       bound (EE-LLM's rule, per sequence); default 0, 0 (top_p stays)
 *   random_seed         integer >= 0, default: one the server picks (EE-LLM: 1234)
 *   logprobs            boolean, default false (true when scoring)
 *   echo_prompts        boolean, default false: text, segments and tokens begin with the
 *                       prompt's, logprobs with null for the prompt's tokens after the first
 *   print_max_prob      boolean, default false: the answer has max_probs
 *   add_BOS             boolean, default false: the end-of-text token goes first
 *   stop_sequences      list of non-empty strings, default none: the answer ends with the
 *                       token that completes the first one found in the generated text
 *   stop_on_eol         boolean, default false: likewise at a newline
 *   prevent_newline_after_colon  boolean, default false: true bans the token "\n" encodes
 *                       to right after the one ":" encodes to (EE-LLM's rule)
 *   no_log              boolean, default false: true keeps the request out of the log
 *   beam_width          integer >= 1; given, 400 (no beam search; EE-LLM ignores it)
 *   length_penalty      number, no effect (EE-LLM: beam search only)
 *   max_len, sentences  400 with EE-LLM's message; other unknown fields are errors.
 * eellm's own:
 *   method              "recompute", "pipeline" or "speculative", default the server's
 *   draft_exit          speculative (required): the layer of the exit that drafts
 *   draft_tokens        speculative: tokens drafted a round, 1..EELLM_MAX_DRAFT_TOKENS,
 *                       default 3; speculative ignores use_early_exit (every token is the
 *                       full model's: exit_layers all n_layers)
 *
 * Answer, one entry per prompt in each list:
 *   text         the generated text (echo_prompts: the prompt followed by it)
 *   segments     each token of it as a string
 *   logprobs     per generated token, log_softmax of the producing head's logits at it
 *                (EE-LLM's); null when not asked for
 *   requst_time  seconds from the request's arrival to its answer (EE-LLM's spelling)
 *   tokens       the ids of the tokens in segments
 *   exit_layers  for each generated token, the layer whose exit produced it (n_layers: final)
 *   max_probs    print_max_prob: per generated token, the head's largest probability
 * Scoring (tokens_to_generate 0): text is the prompt as sent, segments and tokens its
 * tokens (add_BOS's first), logprobs has, for each token after the first, its log-probability after
 * the ones before it under the full model (the final head), exit_layers are empty.
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
  /* Added for EE-LLM's fields: */
  unsigned vocab;             /* the model's (a logits row), for scoring; 0: no scoring */
  uint16_t bos;               /* add_BOS's token (EE-LLM: the end-of-text id) */
  enum eellm_gen_method method; /* a request's without "method" */
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
  /* Added for EE-LLM's fields (see the header comment): */
  int echo_prompts, print_max_prob, add_bos, no_log, stop_on_eol;
  int scoring;                /* tokens_to_generate 0 */
  char **stop_sequences;
  size_t n_stop_sequences;
  /* What the generator runs, set by eellm_api_encode: the prompts, or when scoring
   * every prefix of each prompt of 1 .. len - 1 tokens, for one token at the final
   * head with its logits kept (run_ids point into ids). */
  size_t n_runs;
  const uint16_t **run_ids;
  size_t *run_lens;
  double request_time;        /* seconds, set by the caller before eellm_api_answer */
  unsigned vocab;             /* scoring: the model's */
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

/* The answer to r for its generations out[r->n_runs] (one per prompt, or when scoring
 * one per run), as JSON text (malloc'd); NULL when out
 * of memory or a token is outside the vocabulary. */
char *eellm_api_answer(const struct eellm_api_request *r, const struct eellm_gen_sequence *out,
                       const struct eellm_tokenizer *tok);
/* {"error": message} as JSON text (malloc'd), or NULL when out of memory. */
char *eellm_api_error(const char *message);

#endif
