/* Evaluation of an early-exit model on validation tokens, threshold sweeps
 * in teacher-forced mode, and calibrated thresholds (`eellm eval`).
 *
 * One forward pass over the tokens computes, once per scored token and exit,
 * what every sweep needs: the exit's confidence under both rules (the
 * definitions generation uses: the largest probability of softmax(z / exit
 * temperature), or 1 - entropy / log V), the log-probability it gives the
 * true next token (with its temperature), and whether its top-1 token equals
 * the final head's. A sweep then only walks these arrays on the host.
 *
 * The decision is generation's: a token leaves at the first exit, in layer
 * order, whose confidence is >= the threshold; the final head takes the rest;
 * a threshold >= 1 turns exits off. The cost of a token leaving at exit j is
 * the forward FLOPs of the layers up to exit j's layer plus every exit
 * evaluated on the way (exits 0..j in layer order, j's own included, as
 * generation evaluates them); the final head's tokens pay all layers, all
 * exits and the final head. Full depth is all layers and the final head, no
 * exit. The speedup bound is full depth / mean cost: it ignores the keys and
 * values deeper layers still need for exited tokens (recomputation or the
 * pipeline's fill), so it is an upper bound on generation's speedup. */
#ifndef EELLM_EVAL_H
#define EELLM_EVAL_H

#include "eellm/api.h"
#include "eellm/generate.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct eellm_model eellm_model;
struct eellm_eval;

/* Scores tokens[0..n-1] with model m (created for micro-batches of
 * eellm_model_micro_batch sequences of eellm_model_seq_len tokens T): windows
 * tokens[w T .. w T + T - 1], each position predicting the next token, cover
 * every token once (n - 1 scored positions; the last window's tail and the last
 * micro-batch's missing rows are masked). Every micro-batch is one forward
 * pass of all exits; its logits are reduced to the per-token figures while the
 * next one runs. NULL with one line in err (fewer than 2 tokens, an id outside
 * the vocabulary, non-finite logits, memory). Not under MPI. */
EELLM_API struct eellm_eval *eellm_eval_run(eellm_model *m, const uint16_t *tokens, size_t n,
                                            char *err, size_t errlen);
EELLM_API void eellm_eval_free(struct eellm_eval *e);

/* Scored tokens, and exits including the final head (the last), in layer order. */
EELLM_API size_t eellm_eval_n_tokens(const struct eellm_eval *e);
EELLM_API unsigned eellm_eval_n_exits(const struct eellm_eval *e);
/* Exit j's layer (1-based; n_layers for the final head) and its index in the
 * model (eellm_model_exit_layer's k: spec order, final head last). */
EELLM_API unsigned eellm_eval_exit_layer(const struct eellm_eval *e, unsigned j);
EELLM_API unsigned eellm_eval_exit_model_index(const struct eellm_eval *e, unsigned j);
/* Forward FLOPs per token of a token leaving at exit j, and of full depth. */
EELLM_API double eellm_eval_exit_flops(const struct eellm_eval *e, unsigned j);
EELLM_API double eellm_eval_full_flops(const struct eellm_eval *e);
/* Mean cross-entropy (nats) of exit j over tokens [first, first + count). */
EELLM_API double eellm_eval_exit_loss(const struct eellm_eval *e, unsigned j, size_t first,
                                      size_t count);
/* The per-token figures of token i at exit j (tests, analysis). */
EELLM_API float eellm_eval_confidence(const struct eellm_eval *e, enum eellm_exit_rule rule,
                                      size_t i, unsigned j);
EELLM_API float eellm_eval_logprob(const struct eellm_eval *e, size_t i, unsigned j);

/* One point of a sweep over tokens [first, first + count). */
struct eellm_eval_point {
  enum eellm_exit_rule rule;
  float threshold;
  double *share;         /* caller's array of eellm_eval_n_exits entries, or NULL:
                            the share of tokens leaving at each exit */
  double mean_flops;     /* per token */
  double speedup;        /* full depth FLOPs / mean_flops */
  double loss;           /* early-exit loss: mean -log p(true next) at each token's exit */
  double final_loss;     /* the final head's loss on the same tokens */
  double loss_increase;  /* loss / final_loss - 1 */
  double agreement;      /* share of tokens whose exit's top-1 equals the final head's */
};
EELLM_API void eellm_eval_sweep(const struct eellm_eval *e, enum eellm_exit_rule rule,
                                float threshold, size_t first, size_t count,
                                struct eellm_eval_point *out);

/* Calibration target: the early-exit loss at most (1 + value) times the final
 * head's, or top-1 agreement with the final head at least value. */
enum eellm_eval_target { EELLM_TARGET_LOSS_INCREASE = 0, EELLM_TARGET_AGREEMENT = 1 };

/* The lowest threshold t (one for all exits) such that the target holds on
 * tokens [first, first + count) at t and at every threshold above it (CALM's
 * fixed-sequence order, from exits off downwards): exact over every distinct
 * confidence value, then rounded up to a multiple of 1e-4 (any threshold
 * between two confidence values decides like the next value above it, so the
 * rounding keeps the target). 1 (exits off) when no lower threshold keeps it.
 * Fills out (share may be NULL) at the chosen threshold. */
EELLM_API float eellm_eval_calibrate(const struct eellm_eval *e, enum eellm_exit_rule rule,
                                     enum eellm_eval_target target, double value, size_t first,
                                     size_t count, struct eellm_eval_point *out);

/* Draws the sweep's points as an SVG (written atomically): speedup bound
 * against the early-exit loss increase over the final head (in %), one line
 * per exit rule through its points in threshold order, each point labelled
 * with its threshold; calibrated points (calibrated[i] nonzero; calibrated may
 * be NULL) ringed. 0, or -1 with err. */
EELLM_API int eellm_eval_plot(const char *svg_path, const char *title,
                              const struct eellm_eval_point *points, const int *calibrated,
                              size_t n, char *err, size_t errlen);

/* A baseline to hold the exits against: an interpolated Kneser-Ney trigram
 * (Chen & Goodman) counted on train[0..n_train-1] and scored on
 * val[0..n_val-1], each token after the first predicted from the two before it
 * (the first from one, after an id that stands for "no token"). Each order's
 * discount is n1 / (n1 + 2 n2) from its own counts (n1, n2: n-grams seen once,
 * twice; lower orders count distinct left contexts), so nothing is fitted on
 * val; the unigrams are interpolated with the uniform 1 / vocab_size. */
struct eellm_trigram {
  double loss;        /* mean -log p of the scored tokens (nats/token) */
  size_t scored;      /* n_val - 1 */
  double discount[3]; /* unigram, bigram, trigram */
  size_t types[3];    /* distinct unigrams, bigrams, trigrams counted */
};
/* 0 with out filled, or -1 with one line in err (an id at or above
 * vocab_size, fewer than 2 tokens in either, memory). */
EELLM_API int eellm_trigram_baseline(const uint16_t *train, size_t n_train, const uint16_t *val,
                                     size_t n_val, unsigned vocab_size, struct eellm_trigram *out,
                                     char *err, size_t errlen);

/* Calibrated thresholds in a checkpoint's metadata: "eellm.threshold.maxprob"
 * or "eellm.threshold.entropy" (the number), and "eellm.calibration" (how it
 * was found, one line). Setting rewrites the file atomically with the same
 * tensors and metadata (checksums recomputed); rule_set says which rules to
 * write (bit 1 << rule), thresholds[rule] their values. 0, or -1 with err. */
EELLM_API int eellm_checkpoint_set_thresholds(const char *path, unsigned rule_set,
                                              const float thresholds[2], const char *how,
                                              char *err, size_t errlen);
/* 1 with *threshold set when the checkpoint has a calibrated threshold for
 * rule, 0 when it has none, -1 with err when the file cannot be read or the
 * value is not a number in (0, 1]. */
EELLM_API int eellm_checkpoint_threshold(const char *path, enum eellm_exit_rule rule,
                                         float *threshold, char *err, size_t errlen);
/* The "eellm.calibration" line (malloc'd), or NULL. */
EELLM_API char *eellm_checkpoint_calibration(const char *path);

#ifdef __cplusplus
}
#endif
#endif
