/* What runtime/generate/generate.c (the API, the checks, the set-up) and
 * graph/gen_step.c (the tasks of each step and the exit decisions) share. */
#ifndef EELLM_GRAPH_GEN_STEP_H
#define EELLM_GRAPH_GEN_STEP_H

#include <pthread.h>
#include <starpu.h>
#include <stdint.h>

#include "eellm/generate.h"
#include "graph/transformer.h"

struct eellm_generator {
  struct eellm_model *m;
  struct eellm_tokenizer *tok;
  unsigned max_batch, context, n_layers;
  size_t cache_width, vocab;  /* keys and values of this rank's heads (2 m->share.att) */
  int *exit_at;                /* per layer (0-based): the spec exit reading its output, or -1 */
  size_t n_caches;             /* n_layers, then one per spec exit (BLOCK exits only) */
  float **cache_mem;           /* [max_batch * context, cache_width] each, NULL when unused */
  starpu_data_handle_t *cache;
  /* Steps alternate between two sets of pools, one pool per stage of the
   * model (its handles belong to the stage's rank): a step's handles are free
   * again two steps later, and reusing them never waits for the previous
   * step's tasks. */
  struct eellm_pool **pools[2];
  unsigned long steps;         /* steps run, every call and session: picks the pool */
  /* Continuous batching (eellm_gen_session): which cache slots a session holds,
   * and how many sessions are open (eellm_generate refuses to run beside one). */
  unsigned char *slot_taken;
  unsigned sessions;
  /* The last SPECULATIVE call's rounds (summed over sequences), drafts and drafts kept. */
  size_t spec_rounds, spec_drafted, spec_accepted;
  /* The first ids ":" and "\n" encode to (prevent_newline_after_colon), -1 if none. */
  int32_t colon, newline;
  /* Per exit (the final head last): a bf16 copy of its head's weight, which heads on
   * few rows read (eellm_generator_use_bf16_heads); NULL: none. Tied heads share one,
   * which the first of them owns (head_bf16_owned). */
  starpu_data_handle_t *head_bf16;
  unsigned char *head_bf16_owned;
};

/* A prompt's state during a call. */
struct sequence {
  uint16_t *tokens;  /* prompt, then what was generated: len tokens */
  size_t len, max_len;
  size_t through;    /* positions 0 .. through - 1 have keys and values at every layer */
  int done;
  int active;        /* the slot holds a sequence (sessions; always 1 in eellm_generate) */
  uint64_t rng;
  float uniform;     /* this step's draw */
  float top_p;       /* for its next token (top_p_decay) */
  struct eellm_gen_sequence *out;
};

/* The rows going through the layers together, and their residual streams. */
struct flow {
  size_t n;
  int32_t *positions, *slots;
  size_t *seq;                   /* the sequence of each row */
  starpu_data_handle_t positions_h, slots_h;
  starpu_data_handle_t x;        /* [n, D]: output of the last layer submitted */
  starpu_data_handle_t r;        /* [n, D]: that layer's post-attention residual */
  starpu_data_handle_t block;    /* [n, D]: a BLOCK exit's layer output, or NULL */
};

/* Everything one call of eellm_generate holds. */
struct call {
  struct eellm_generator *g;
  const struct eellm_model *m;
  const struct eellm_gen_options *o;
  struct sequence *seqs;
  size_t n_seqs;
  unsigned char *allowed;        /* per layer: its exit may fire */
  unsigned *points, n_points;    /* where decisions fall: the spec exits that may fire, in
                                    layer order, then the final head (n_exits) */
  struct eellm_placement place;  /* stages of the layers (PIPELINE; one under RECOMPUTE) */
  int prio_decide;               /* above every catch-up priority */
  /* The step under way. */
  int step, in_step;
  int one_step;                  /* sessions: the chain stops at the end of a step */
  struct eellm_pool **pools;     /* its handles, per stage of the model */
  unsigned stage;                /* the model's stage whose tasks go in now (its rank runs them) */
  struct eellm_pool *pool;       /* that stage's pool */
  struct flow f;
  size_t *undecided, n_und;      /* sequences without their token yet */
  unsigned layer;                /* the next layer to submit */
  unsigned next_point;           /* index into points */
  struct eellm_head head;        /* whose choices are awaited */
  starpu_data_handle_t logits, choices;
  void **kept;                   /* host scratch, freed at the step's end */
  size_t n_kept, cap_kept;
  /* The thread that submitted a head and StarPU's callback bringing its
   * choices meet here; the second to arrive goes on. */
  pthread_mutex_t lock;
  pthread_cond_t finished_cv;
  int arrivals, finished;
  unsigned bad_layer;            /* a head whose logits were not finite (0: none) */
  /* SPECULATIVE: rounds (per sequence), drafts made and drafts kept. */
  size_t spec_rounds, spec_drafted, spec_accepted;
};

void *gen_xmalloc(size_t bytes);
/* Runs the call's steps (SPECULATIVE: rounds); returns once every sequence has
 * finished and every task has run. */
void gen_run(struct call *c);
/* Sessions: the call's lock and condition (gen_call_init once, gen_call_end at
 * the end), and one step (SPECULATIVE: one round): returns once every unfinished
 * sequence has its next token; PIPELINE's catch-up work of the step may still be
 * running (later steps' tasks come after it on every cache). */
void gen_call_init(struct call *c);
void gen_call_end(struct call *c);
void gen_run_step(struct call *c);

#endif
