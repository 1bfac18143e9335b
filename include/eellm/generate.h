/* Early-exit generation with KV caches, as StarPU tasks.
 *
 * A token leaves at the first allowed exit whose confidence passes the
 * threshold: the maximum softmax probability (EE-LLM's rule) or, with
 * EELLM_EXIT_ENTROPY, 1 - entropy / log(vocab). Threshold 1 (or use_early_exit
 * 0) means every token goes through the final head.
 *
 * Two KV-cache-compatible methods:
 * - RECOMPUTE: deeper layers have no keys/values for a token that exited early;
 *   they are computed together with the next token that goes deeper, batched
 *   with it (EE-LLM's KV recomputation).
 * - PIPELINE: the model runs as stages; a token that exits at stage s is emitted
 *   at once and the next token starts on stage 0 while the stages after s finish
 *   the exited token's forward only to fill their caches (no recomputation).
 *   Stages are StarPU tasks with dependencies on the per-layer caches, so the
 *   overlap comes from the runtime, not from a hand-written schedule.
 * - SPECULATIVE (LayerSkip-style self-speculation): per round,
 *   the exit at draft_exit_layer L drafts draft_tokens tokens one at a time
 *   through layers 1..L (filling their caches); the layers after L then verify
 *   them in one batched pass over the draft's layer-L outputs (layers <= L are
 *   not run again), the final head on every drafted position; the longest
 *   prefix the final head agrees with is kept, plus the final head's token
 *   after it. Greedy, the tokens are the full model's (exits off), token for
 *   token; sampled, drafts are drawn from the draft exit and kept by the
 *   speculative-sampling rule (keep x with probability min(1, p(x) / q(x)),
 *   else draw from norm(max(0, p - q))), p and q the final head's and the
 *   draft exit's distributions at the same temperature, top-k and top-p, so
 *   tokens follow the full model's distribution (not the same draws as
 *   RECOMPUTE's). Every token reports the final layer; use_early_exit and
 *   threshold are ignored; on_token runs on the calling thread. In a session
 *   a step is one round for every running sequence (1 to draft_tokens + 1
 *   tokens each); sequences join and leave between rounds.
 * Several prompts form one batch; every sequence makes its own exit decisions. */
#ifndef EELLM_GENERATE_H
#define EELLM_GENERATE_H

#include "eellm/api.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum eellm_exit_rule { EELLM_EXIT_MAXPROB = 0, EELLM_EXIT_ENTROPY = 1 };
enum eellm_gen_method {
  EELLM_GEN_RECOMPUTE = 0,
  EELLM_GEN_PIPELINE = 1,
  EELLM_GEN_SPECULATIVE = 2
};

struct eellm_gen_options {
  unsigned max_tokens;          /* tokens to generate per prompt */
  int use_early_exit;
  float threshold;              /* in (0, 1]; 1 turns exits off */
  enum eellm_exit_rule rule;
  const unsigned *exit_layers;  /* layers whose exits may fire; n_exit_layers 0 = all */
  size_t n_exit_layers;
  enum eellm_gen_method method;
  float temperature;            /* 0 = greedy */
  unsigned top_k;               /* 0 = off */
  float top_p;                  /* 1 = off */
  uint64_t seed;
  int stop_at_eot;              /* stop a sequence at the end-of-text token */
  /* Called for every generated token as soon as it is known (streaming); may be NULL. */
  void (*on_token)(void *ctx, size_t sequence, uint16_t token, unsigned exit_layer, float logprob);
  void *ctx;
  /* Added after the first contract: */
  unsigned stages;              /* PIPELINE: stages (0 = split at the exits; 2 without exits;
                                   under MPI, 0 or the rank count) */
  int keep_logits;              /* fill eellm_gen_sequence.logits (tests, analysis) */
  /* SPECULATIVE (added later): the exit at layer draft_exit_layer drafts
   * draft_tokens (1..EELLM_MAX_DRAFT_TOKENS) tokens per round. */
  unsigned draft_exit_layer;
  unsigned draft_tokens;
  /* EE-LLM's (added later): after each token of a sequence, when top_p > 0 and
   * top_p_decay > 0, top_p = top_p * top_p_decay, not under top_p_bound when that
   * is > 0 (see eellm_gen_next_top_p); 0 and 0: top_p stays. Both in [0, 1]. */
  float top_p_decay, top_p_bound;
  /* Never the token "\n" encodes to right after the one ":" encodes to (the
   * first id of each, EE-LLM's rule): its logit counts as -1e10 at every head,
   * in the exit decision, the choice and the reported probabilities. */
  int prevent_newline_after_colon;
};

#define EELLM_MAX_DRAFT_TOKENS 16

/* What one prompt produced. */
struct eellm_gen_sequence {
  uint16_t *tokens;             /* generated tokens (malloc'd) */
  unsigned *exit_layers;        /* layer of the exit that produced each token (n_layers: final) */
  float *logprobs;              /* log-probability of each token under the distribution it was drawn from */
  size_t n;
  float *logits;                /* keep_logits: n x vocab, each token's exit's logits; else NULL */
  /* Added after the first contract: of the producing exit's logits as they are (no exit
   * temperature, no sampling restriction; EE-LLM's logprobs and print_max_prob). */
  float *raw_logprobs;          /* log_softmax(logits)[token] */
  float *max_probs;             /* max softmax(logits) */
};

struct eellm_generator;
struct eellm_tokenizer;

/* Bad arguments and prompts are reported (-1 or NULL, and err); running out of
 * memory while a generation's tasks are submitted aborts (see eellm/api.h). */

/* Loads a checkpoint (its spec from the metadata) and its tokenizer (metadata
 * "tokenizer": byte or gpt2; GPT-2 files from tokenizer_dir, NULL = default),
 * for batches of up to max_batch prompts. The StarPU runtime must be started.
 * Under eellm_mpi_init every rank is one pipeline stage (the split of
 * eellm_generator_stages for the rank count) and holds its layers' and exits'
 * weights and caches; every rank then makes the same calls, and eellm_generate
 * gives every rank the same tokens (PIPELINE with stages 0 or the rank count,
 * or RECOMPUTE; SPECULATIVE runs in one process). */
EELLM_API struct eellm_generator *eellm_generator_open(const char *ckpt, const char *tokenizer_dir,
                                                       unsigned max_batch, char *err,
                                                       size_t errlen);
/* The same with tp tensor-parallel ranks per stage (tp must divide the ranks):
 * ranks / tp pipeline stages, each layer and head split across its stage's tp
 * ranks as in training (Megatron-LM), the heads' logits gathered for the
 * decisions. The tokens are the single process's. */
EELLM_API struct eellm_generator *eellm_generator_open_parallel(const char *ckpt,
                                                                const char *tokenizer_dir,
                                                                unsigned max_batch, unsigned tp,
                                                                char *err, size_t errlen);
EELLM_API void eellm_generator_close(struct eellm_generator *g);
/* From now on the heads on up to 8 rows a step (decoding: a batch of up to 8
 * sequences) read bf16 copies of their weights, rounded to nearest: half the bytes
 * per token, the products in fp32 on the widened weights (the prompt's step and
 * wider batches keep the fp32 weights). One process only; 0, or -1 with err. */
EELLM_API int eellm_generator_use_bf16_heads(struct eellm_generator *g, char *err, size_t errlen);
/* The loaded model's context length, vocabulary and end-of-text id, and its tokenizer. */
EELLM_API unsigned eellm_generator_context(const struct eellm_generator *g);
EELLM_API struct eellm_tokenizer *eellm_generator_tokenizer(struct eellm_generator *g);
/* Generates for n prompts (token ids). Returns 0, or -1 with a one-line error
 * (prompt longer than the context, bad option, ...). Not reentrant: callers
 * serialise calls on one generator. Free results with eellm_gen_sequence_free. */
EELLM_API int eellm_generate(struct eellm_generator *g, const uint16_t *const *prompts,
                             const size_t *prompt_lens, size_t n, const struct eellm_gen_options *o,
                             struct eellm_gen_sequence *out, char *err, size_t errlen);
EELLM_API void eellm_gen_sequence_free(struct eellm_gen_sequence *s);

/* Added after the first contract.
 *
 * A sequence ends after max_tokens tokens, after the end-of-text token (kept as
 * its last token) when stop_at_eot, or when prompt and tokens fill the context.
 * top_p <= 0 also means off. Sampling draws one uniform number per token from a
 * stream per sequence, seeded by seed and the sequence's index in the batch.
 * Greedy tokens' logprob is under softmax(logits / exit temperature).
 * eellm_generate returns once every sequence has finished; in between, on_token
 * runs on a StarPU worker thread (the one that brought the exit's decision),
 * one call at a time, in the order of the tokens: it should be quick.
 *
 * The model's layers, its exits' layers (1-based, ascending; returns how many;
 * layers may be NULL), and the stage split PIPELINE uses for `stages` (0: the
 * default): returns the number of stages P and fills stage_layers[0..P-1] (room
 * for n_layers entries), or 0 when stages is out of 1..n_layers (or memory runs out). */
EELLM_API unsigned eellm_generator_n_layers(const struct eellm_generator *g);
EELLM_API size_t eellm_generator_exit_layers(const struct eellm_generator *g, unsigned *layers);
EELLM_API unsigned eellm_generator_stages(const struct eellm_generator *g, unsigned stages,
                                          unsigned *stage_layers);
/* After eellm_generate: copies the cache rows of positions first .. first +
 * count - 1 of sequence `sequence` at layer `layer` (1-based) into kv [count, 2 *
 * d_model] (key, RoPE-rotated for RoPE models, | value). 0, or -1 on bad arguments
 * (under MPI: also on the ranks that do not hold the layer's cache). */
EELLM_API int eellm_generator_read_cache(struct eellm_generator *g, size_t sequence, unsigned layer,
                                         size_t first, size_t count, float *kv);

/* Added after the first contract: continuous batching.
 *
 * A session is a running batch that sequences join and leave between steps.
 * Each sequence holds one of the generator's max_batch cache slots from
 * eellm_gen_session_add until eellm_gen_session_take hands its output back;
 * the sessions of one generator share its slots (several sessions, each with
 * its own options, may be open and stepped in turn). A step gives every
 * unfinished sequence of the session its next token; a sequence added before a
 * step joins it (its whole prompt goes through the layers beside the others'
 * newest tokens), a finished one stops taking part. What a sequence generates
 * does not depend on what else is in the batch or when it joined: greedy, the
 * tokens eellm_generate gives for its prompt alone; sampled, the stream seeded
 * by (seed, stream) is the one eellm_generate gives the prompt at index
 * `stream` of a call with o.seed = seed. Every method: under PIPELINE a step
 * returns once every sequence has its token, while the deeper stages may still
 * be filling the caches; the next step's tasks come after that work on every
 * cache; under SPECULATIVE a step is a round (see above).
 *
 * The session's options are o's but for max_tokens and seed, given per
 * sequence; on_token gets the sequence's slot. eellm_generate refuses to run
 * while a session is open. Calls on one generator and its sessions are not
 * reentrant: one thread, or the caller's lock. Under MPI every rank makes the
 * same session calls in the same order (eellm serve's ranks replay rank 0's)
 * and gets the same sequences. */
struct eellm_gen_session;

/* NULL with err on bad options. */
EELLM_API struct eellm_gen_session *eellm_gen_session_open(struct eellm_generator *g,
                                                           const struct eellm_gen_options *o,
                                                           char *err, size_t errlen);
/* Adds a prompt (copied) that joins at the next step: returns its slot (0 ..
 * max_batch - 1), or -1 with err when no slot is free or the prompt is bad. */
EELLM_API long eellm_gen_session_add(struct eellm_gen_session *s, const uint16_t *prompt,
                                     size_t len, unsigned max_tokens, uint64_t seed,
                                     uint64_t stream, char *err, size_t errlen);
/* One step; returns how many of the session's sequences are still unfinished
 * (0 at once when none was). */
EELLM_API size_t eellm_gen_session_step(struct eellm_gen_session *s);
EELLM_API size_t eellm_gen_session_running(const struct eellm_gen_session *s);
/* Hands over a finished sequence's output (free it with eellm_gen_sequence_free)
 * and frees its slot: returns the slot, or -1 when no sequence has finished. */
EELLM_API long eellm_gen_session_take(struct eellm_gen_session *s,
                                      struct eellm_gen_sequence *out);
/* Drops the unfinished sequences, frees their slots and the session; NULL is a no-op. */
EELLM_API void eellm_gen_session_close(struct eellm_gen_session *s);
/* Added later: after an eellm_generate call with method SPECULATIVE, its rounds
 * (summed over the sequences), the tokens the draft exit proposed and how many
 * of them the full model kept (each round also adds one token of the full
 * model's own); zeros after a call of another method. */
EELLM_API void eellm_generator_speculation(const struct eellm_generator *g, size_t *rounds,
                                           size_t *drafted, size_t *accepted);
/* Added later: the top_p the token after one drawn with top_p gets under o's
 * top_p_decay and top_p_bound (a sequence's first token gets o->top_p). */
EELLM_API float eellm_gen_next_top_p(const struct eellm_gen_options *o, float top_p);
/* Slots no session holds. */
EELLM_API unsigned eellm_generator_free_slots(const struct eellm_generator *g);

/* Added after the first contract: the model's vocabulary (the length of a logits row,
 * which may exceed the tokenizer's). */
EELLM_API unsigned eellm_generator_vocab(const struct eellm_generator *g);

#ifdef __cplusplus
}
#endif
#endif
