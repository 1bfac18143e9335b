/* Early-exit generation (generate.h): the generator (weights, tokenizer, the
 * per-layer key/value caches), the checks of a request, and the set-up of a
 * call; graph/gen_step.c submits the steps. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "eellm/tokenizer.h"
#include "graph/gen_step.h"
#include "runtime/engine/mpi.h"

/* ---- the generator ----------------------------------------------------------- */

/* Cache i, held by the rank of `stage` (memory there alone). */
static int add_cache(struct eellm_generator *g, size_t i, unsigned stage) {
  size_t rows = (size_t)g->max_batch * g->context;
  int owner = eellm_stage_rank(&g->m->place, stage);
  int home = -1;
  if (!eellm_mpi_active() || owner == eellm_rank()) {
    g->cache_mem[i] = calloc(rows * g->cache_width, sizeof(float));
    if (!g->cache_mem[i]) return -1;
    home = STARPU_MAIN_RAM;
  }
  starpu_matrix_data_register(&g->cache[i], home, (uintptr_t)g->cache_mem[i], g->cache_width,
                              g->cache_width, rows, sizeof(float));
  eellm_mpi_register(g->cache[i], owner);
  return 0;
}

static int build_caches(struct eellm_generator *g) {
  const Eellm__Model *spec = g->m->spec;
  g->n_caches = spec->n_layers + spec->n_exits;
  g->cache_mem = calloc(g->n_caches, sizeof *g->cache_mem);
  g->cache = calloc(g->n_caches, sizeof *g->cache);
  g->exit_at = malloc(spec->n_layers * sizeof *g->exit_at);
  if (!g->cache_mem || !g->cache || !g->exit_at) return -1;
  for (unsigned l = 0; l < spec->n_layers; l++) {
    g->exit_at[l] = -1;
    if (add_cache(g, l, g->m->place.layer_stage[l]) != 0) return -1;
  }
  for (unsigned k = 0; k < spec->n_exits; k++) {
    g->exit_at[g->m->exits[k].layer - 1] = (int)k;
    if (g->m->exits[k].structure == EELLM__EXIT__STRUCTURE__BLOCK &&
        add_cache(g, spec->n_layers + k, eellm_exit_stage(&g->m->place, k)) != 0)
      return -1;
  }
  return 0;
}

static int add_pools(struct eellm_generator *g) {
  unsigned stages = g->m->place.layout.pp;
  for (int parity = 0; parity < 2; parity++) {
    if (!(g->pools[parity] = calloc(stages, sizeof *g->pools[parity]))) return -1;
    for (unsigned st = 0; st < stages; st++)
      if (!(g->pools[parity][st] = eellm_pool_new(eellm_stage_rank(&g->m->place, st)))) return -1;
  }
  return 0;
}

/* The first id text encodes to, -1 when none (or out of memory). */
static int32_t first_id(struct eellm_tokenizer *tok, const char *text) {
  struct eellm_ids ids = {0};
  int32_t id = eellm_tokenizer_encode(tok, text, strlen(text), &ids) == 0 && ids.n ? ids.v[0] : -1;
  free(ids.v);
  return id;
}

struct eellm_generator *eellm_generator_open(const char *ckpt, const char *tokenizer_dir,
                                             unsigned max_batch, char *err, size_t errlen) {
  return eellm_generator_open_parallel(ckpt, tokenizer_dir, max_batch, 1, err, errlen);
}

struct eellm_generator *eellm_generator_open_parallel(const char *ckpt, const char *tokenizer_dir,
                                                      unsigned max_batch, unsigned tp, char *err,
                                                      size_t errlen) {
  if (max_batch < 1) {
    snprintf(err, errlen, "a batch holds at least one prompt");
    return NULL;
  }
  unsigned ranks = eellm_mpi_active() ? (unsigned)eellm_nranks() : 1;
  if (tp < 1 || ranks % tp != 0) {
    snprintf(err, errlen, "%u tensor-parallel ranks do not divide the %u ranks", tp, ranks);
    return NULL;
  }
  Eellm__Model *spec = eellm_checkpoint_spec(ckpt, err, errlen);
  if (!spec) return NULL;
  struct eellm_generator *g = calloc(1, sizeof *g);
  if (!g) abort();
  /* Under MPI the ranks are ranks / tp pipeline stages of tp tensor-parallel ranks each,
   * every rank holding its part of its stage's weights and caches. */
  Eellm__Parallelism par = EELLM__PARALLELISM__INIT;
  par.pp = ranks / tp;
  par.tp = tp;
  g->m = eellm_model_create_parallel(spec, 1, 1, &par, err, errlen);
  eellm_model_spec_free(spec);
  if (!g->m || eellm_model_load(g->m, ckpt, err, errlen) != 0) goto fail;
  /* A NaN or inf weight would only give garbage tokens: refuse the model. */
  if (eellm_model_check_finite(g->m, ckpt, err, errlen) != 0) goto fail;
  const char *kind = eellm_model_tokenizer(g->m);
  if (!kind) {
    snprintf(err, errlen, "%s: no tokenizer named in the checkpoint's metadata", ckpt);
    goto fail;
  }
  if (!(g->tok = eellm_tokenizer_open(kind, tokenizer_dir, err, errlen))) goto fail;
  g->colon = first_id(g->tok, ":");
  g->newline = first_id(g->tok, "\n");
  spec = g->m->spec;
  if (eellm_tokenizer_vocab_size(g->tok) > spec->vocab_size) {
    snprintf(err, errlen, "%s: tokenizer %s has %u ids, the model only %u", ckpt, kind,
             eellm_tokenizer_vocab_size(g->tok), spec->vocab_size);
    goto fail;
  }
  g->max_batch = max_batch;
  g->context = spec->context_length;
  g->n_layers = spec->n_layers;
  g->cache_width = 2 * g->m->share.att;
  g->vocab = spec->vocab_size;
  g->slot_taken = calloc(max_batch, 1);
  if (add_pools(g) != 0 || !g->slot_taken || build_caches(g) != 0) {
    snprintf(err, errlen, "out of memory for the key/value caches of %u sequences", max_batch);
    goto fail;
  }
  return g;
fail:
  eellm_generator_close(g);
  return NULL;
}

int eellm_generator_use_bf16_heads(struct eellm_generator *g, char *err, size_t errlen) {
  if (g->head_bf16) return 0;
  if (eellm_nranks() > 1) {
    snprintf(err, errlen, "bf16 heads run in one process (this run has %d ranks)", eellm_nranks());
    return -1;
  }
  unsigned heads = g->m->spec->n_exits + 1;
  g->head_bf16 = calloc(heads, sizeof *g->head_bf16);
  g->head_bf16_owned = calloc(heads, 1);
  if (!g->head_bf16 || !g->head_bf16_owned) abort(); /* out of memory */
  struct eellm_task_info ti = {.kind = EELLM_KIND_OTHER, .micro = -1, .layer = -1};
  for (unsigned e = 0; e < heads; e++) {
    int w = eellm_head_of(g->m, e).head_w;
    unsigned tied = 0;
    while (tied < e && eellm_head_of(g->m, tied).head_w != w) tied++;
    if (tied < e) {
      g->head_bf16[e] = g->head_bf16[tied];
      continue;
    }
    starpu_data_handle_t src = eellm_param(g->m, w);
    starpu_matrix_data_register(&g->head_bf16[e], -1, 0, starpu_matrix_get_nx(src),
                                starpu_matrix_get_nx(src), starpu_matrix_get_ny(src),
                                sizeof(uint16_t));
    g->head_bf16_owned[e] = 1;
    eellm_insert_to_bf16(g->head_bf16[e], src, &ti);
  }
  return 0;
}

void eellm_generator_close(struct eellm_generator *g) {
  if (!g) return;
  eellm_mpi_quiesce();
  for (unsigned e = 0; g->head_bf16 && e <= g->m->spec->n_exits; e++)
    if (g->head_bf16_owned[e]) starpu_data_unregister(g->head_bf16[e]);
  free(g->head_bf16);
  free(g->head_bf16_owned);
  for (int parity = 0; parity < 2; parity++) {
    for (unsigned st = 0; g->pools[parity] && st < g->m->place.layout.pp; st++)
      eellm_pool_free(g->pools[parity][st]);
    free(g->pools[parity]);
  }
  for (size_t i = 0; g->cache && i < g->n_caches; i++) {
    if (g->cache[i]) starpu_data_unregister(g->cache[i]);
    free(g->cache_mem[i]);
  }
  free(g->cache);
  free(g->cache_mem);
  free(g->exit_at);
  free(g->slot_taken);
  eellm_tokenizer_close(g->tok);
  eellm_model_destroy(g->m);
  free(g);
}

unsigned eellm_generator_context(const struct eellm_generator *g) { return g->context; }
struct eellm_tokenizer *eellm_generator_tokenizer(struct eellm_generator *g) { return g->tok; }
unsigned eellm_generator_n_layers(const struct eellm_generator *g) { return g->n_layers; }

size_t eellm_generator_exit_layers(const struct eellm_generator *g, unsigned *layers) {
  size_t n = 0;
  for (unsigned l = 0; l < g->n_layers; l++)
    if (g->exit_at[l] >= 0) {
      if (layers) layers[n] = l + 1;
      n++;
    }
  return n;
}

unsigned eellm_generator_stages(const struct eellm_generator *g, unsigned stages,
                                unsigned *stage_layers) {
  if (stages > g->n_layers) return 0;
  if (stages == 0 && eellm_generator_exit_layers(g, NULL) > 0) {
    unsigned n = 0, first = 0;
    for (unsigned l = 0; l < g->n_layers; l++)
      if (g->exit_at[l] >= 0 || l + 1 == g->n_layers) {
        stage_layers[n++] = l + 1 - first;
        first = l + 1;
      }
    return n;
  }
  if (stages == 0) stages = g->n_layers >= 2 ? 2 : 1;
  if (eellm_model_spec_stage_split(g->m->spec, stages, NULL, 0, stage_layers) != 0) return 0;
  return stages;
}

int eellm_generator_read_cache(struct eellm_generator *g, size_t sequence, unsigned layer,
                               size_t first, size_t count, float *kv) {
  if (sequence >= g->max_batch || layer < 1 || layer > g->n_layers || first > g->context ||
      count > g->context - first || !g->cache_mem[layer - 1])
    return -1;
  starpu_data_handle_t h = g->cache[layer - 1];
  size_t width = g->cache_width;
  starpu_data_acquire(h, STARPU_R);
  memcpy(kv, g->cache_mem[layer - 1] + (sequence * g->context + first) * width,
         count * width * sizeof *kv);
  starpu_data_release(h);
  return 0;
}

void eellm_gen_sequence_free(struct eellm_gen_sequence *s) {
  if (!s) return;
  free(s->tokens);
  free(s->exit_layers);
  free(s->logprobs);
  free(s->logits);
  free(s->raw_logprobs);
  free(s->max_probs);
  memset(s, 0, sizeof *s);
}

/* ---- eellm_generate ------------------------------------------------------------------ */

/* Under MPI the stages are the ranks (of a tensor index); SPECULATIVE's blocking phases
 * run in one process only. */
static int check_ranks(const struct call *c, const struct eellm_gen_options *o, char *err,
                       size_t errlen) {
  unsigned ranks = c->m->place.layout.pp;
  if (ranks == 1 && c->m->place.layout.tp == 1) return 0;
  if (o->method == EELLM_GEN_SPECULATIVE) {
    snprintf(err, errlen, "speculative generation runs in one process, not on %u ranks",
             ranks * c->m->place.layout.tp);
    return -1;
  }
  if (o->stages && o->stages != ranks) {
    snprintf(err, errlen, "%u stages on %u ranks: under MPI each rank is one stage", o->stages,
             ranks);
    return -1;
  }
  return 0;
}

static int check_options(const struct call *c, const struct eellm_gen_options *o, char *err,
                         size_t errlen) {
  if (o->use_early_exit && !(o->threshold > 0 && o->threshold <= 1)) {
    snprintf(err, errlen, "threshold %g outside (0, 1]", (double)o->threshold);
    return -1;
  }
  if (o->rule != EELLM_EXIT_MAXPROB && o->rule != EELLM_EXIT_ENTROPY) {
    snprintf(err, errlen, "unknown exit rule %d", (int)o->rule);
    return -1;
  }
  if (o->method != EELLM_GEN_RECOMPUTE && o->method != EELLM_GEN_PIPELINE &&
      o->method != EELLM_GEN_SPECULATIVE) {
    snprintf(err, errlen, "unknown generation method %d", (int)o->method);
    return -1;
  }
  if (o->method == EELLM_GEN_SPECULATIVE) {
    unsigned L = o->draft_exit_layer;
    if (L < 1 || L > c->g->n_layers || c->g->exit_at[L - 1] < 0) {
      snprintf(err, errlen, "draft exit layer %u: the model has no exit there", L);
      return -1;
    }
    if (o->draft_tokens < 1 || o->draft_tokens > EELLM_MAX_DRAFT_TOKENS) {
      snprintf(err, errlen, "draft tokens %u outside 1..%u", o->draft_tokens,
               EELLM_MAX_DRAFT_TOKENS);
      return -1;
    }
  }
  if (!(o->temperature >= 0 && isfinite(o->temperature)) || !(o->top_p >= 0 && o->top_p <= 1)) {
    snprintf(err, errlen, "temperature %g (want >= 0) or top_p %g (want 0..1) out of range",
             (double)o->temperature, (double)o->top_p);
    return -1;
  }
  if (!(o->top_p_decay >= 0 && o->top_p_decay <= 1) ||
      !(o->top_p_bound >= 0 && o->top_p_bound <= 1)) {
    snprintf(err, errlen, "top_p_decay %g or top_p_bound %g outside 0..1", (double)o->top_p_decay,
             (double)o->top_p_bound);
    return -1;
  }
  if (o->stages > c->g->n_layers) {
    snprintf(err, errlen, "%u stages for %u layers", o->stages, c->g->n_layers);
    return -1;
  }
  return check_ranks(c, o, err, errlen);
}

/* Which exits may fire: none with exits off, else the listed layers (all when
 * none); SPECULATIVE: the draft exit (a BLOCK draft exit's layer fills its cache). */
static int allowed_exits(struct call *c, char *err, size_t errlen) {
  const struct eellm_gen_options *o = c->o;
  unsigned n_layers = c->g->n_layers;
  int speculative = o->method == EELLM_GEN_SPECULATIVE;
  int on = o->use_early_exit && o->threshold < 1 && !speculative;
  for (unsigned l = 0; l < n_layers; l++)
    c->allowed[l] = on && !o->n_exit_layers && c->g->exit_at[l] >= 0;
  for (size_t i = 0; i < o->n_exit_layers; i++) {
    unsigned layer = o->exit_layers[i];
    if (layer < 1 || layer > n_layers || (c->g->exit_at[layer - 1] < 0 && layer != n_layers)) {
      snprintf(err, errlen, "exit layer %u: the model has no exit there", layer);
      return -1;
    }
    c->allowed[layer - 1] = on && c->g->exit_at[layer - 1] >= 0;
  }
  if (speculative) c->allowed[o->draft_exit_layer - 1] = 1;
  return 0;
}

static int check_prompt(const struct eellm_generator *g, size_t s, const uint16_t *prompt,
                        size_t len, char *err, size_t errlen) {
  if (len < 1 || len > g->context) {
    snprintf(err, errlen, "prompt %zu has %zu tokens: need 1..%u (the context)", s, len,
             g->context);
    return -1;
  }
  for (size_t i = 0; i < len; i++)
    if (prompt[i] >= g->vocab) {
      snprintf(err, errlen, "prompt %zu: token id %u outside the vocabulary (%zu)", s,
               (unsigned)prompt[i], g->vocab);
      return -1;
    }
  return 0;
}

static int check_prompts(const struct eellm_generator *g, const uint16_t *const *prompts,
                         const size_t *lens, size_t n, char *err, size_t errlen) {
  if (n > g->max_batch) {
    snprintf(err, errlen, "%zu prompts: this generator takes at most %u at once", n, g->max_batch);
    return -1;
  }
  for (size_t s = 0; s < n; s++)
    if (check_prompt(g, s, prompts[s], lens[s], err, errlen) != 0) return -1;
  return 0;
}

/* Sequence s of the call (its cache slot) from the prompt; its random stream
 * is seeded by seed and stream. */
static void start_sequence(struct call *c, size_t s, const uint16_t *prompt, size_t len,
                           unsigned max_tokens, uint64_t seed, uint64_t stream,
                           struct eellm_gen_sequence *out) {
  struct sequence *q = &c->seqs[s];
  size_t room = c->g->context - len, n_max = max_tokens < room ? max_tokens : room;
  q->tokens = gen_xmalloc((len + n_max) * sizeof *q->tokens);
  memcpy(q->tokens, prompt, len * sizeof *prompt);
  q->len = len;
  q->max_len = len + n_max;
  q->through = 0;
  q->done = n_max == 0;
  q->active = 1;
  q->rng = seed * 0x2545f4914f6cdd1dull + stream;
  q->top_p = c->o->top_p;
  q->out = out;
  out->tokens = gen_xmalloc(n_max * sizeof *out->tokens);
  out->exit_layers = gen_xmalloc(n_max * sizeof *out->exit_layers);
  out->logprobs = gen_xmalloc(n_max * sizeof *out->logprobs);
  out->raw_logprobs = gen_xmalloc(n_max * sizeof *out->raw_logprobs);
  out->max_probs = gen_xmalloc(n_max * sizeof *out->max_probs);
  if (c->o->keep_logits) out->logits = gen_xmalloc(n_max * c->g->vocab * sizeof *out->logits);
}

static void end_call(struct call *c) {
  for (size_t s = 0; s < c->n_seqs; s++) free(c->seqs[s].tokens);
  free(c->seqs);
  free(c->allowed);
  eellm_placement_free(&c->place);
  free(c->undecided);
  free(c->points);
}

/* Where decisions fall: the exits that may fire, in layer order, then the final head. */
static void decision_points(struct call *c) {
  c->n_points = 0;
  for (unsigned l = 0; l < c->g->n_layers; l++)
    if (c->allowed[l]) c->points[c->n_points++] = (unsigned)c->g->exit_at[l];
  c->points[c->n_points++] = c->m->spec->n_exits;
}

/* Each layer's stage (PIPELINE's split: the model's across ranks; one stage
 * under RECOMPUTE), and a decision priority above the stages'. */
static void assign_stages(struct call *c) {
  unsigned *stage_layers = gen_xmalloc(c->g->n_layers * sizeof *stage_layers);
  struct eellm_layout layout = {.pp = 1, .tp = 1, .dp = 1};
  unsigned ranks = c->m->place.layout.pp;
  if (c->o->method == EELLM_GEN_PIPELINE)
    layout.pp = eellm_generator_stages(c->g, ranks > 1 ? ranks : c->o->stages, stage_layers);
  else
    stage_layers[0] = c->g->n_layers;
  char err[128];
  if (eellm_placement_init(&c->place, c->m->spec, layout, stage_layers, layout.pp, 0, 0, err,
                           sizeof err) != 0)
    abort(); /* check_options took the stage count: only memory can fail */
  free(stage_layers);
  c->prio_decide = (int)layout.pp;
}

/* A call on g for n sequences under options o: its buffers, checked options,
 * stages and decision points. 0, or -1 with err (nothing left to free). */
static int begin_call(struct call *c, struct eellm_generator *g,
                      const struct eellm_gen_options *o, size_t n, char *err, size_t errlen) {
  *c = (struct call){.g = g, .m = g->m, .o = o, .n_seqs = n};
  c->allowed = calloc(g->n_layers, 1);
  c->seqs = calloc(n ? n : 1, sizeof *c->seqs);
  c->undecided = calloc(n ? n : 1, sizeof *c->undecided);
  c->points = calloc(g->n_layers + 1, sizeof *c->points);
  if (!c->allowed || !c->seqs || !c->undecided || !c->points) abort();
  if (check_options(c, o, err, errlen) != 0 || allowed_exits(c, err, errlen) != 0) {
    end_call(c);
    return -1;
  }
  assign_stages(c);
  decision_points(c);
  return 0;
}

int eellm_generate(struct eellm_generator *g, const uint16_t *const *prompts,
                   const size_t *prompt_lens, size_t n, const struct eellm_gen_options *o,
                   struct eellm_gen_sequence *out, char *err, size_t errlen) {
  struct call c;
  for (size_t s = 0; s < n; s++) memset(&out[s], 0, sizeof out[s]);
  if (g->sessions > 0) {
    snprintf(err, errlen, "the generator has an open session: close it first");
    return -1;
  }
  if (begin_call(&c, g, o, n, err, errlen) != 0) return -1;
  if (check_prompts(g, prompts, prompt_lens, n, err, errlen) != 0) {
    end_call(&c);
    return -1;
  }
  for (size_t s = 0; s < n; s++)
    start_sequence(&c, s, prompts[s], prompt_lens[s], o->max_tokens, o->seed, s, &out[s]);
  gen_run(&c);
  g->spec_rounds = c.spec_rounds;
  g->spec_drafted = c.spec_drafted;
  g->spec_accepted = c.spec_accepted;
  end_call(&c);
  if (c.bad_layer) {
    snprintf(err, errlen, "the head at layer %u gave non-finite logits (the weights overflow); "
             "generation stopped", c.bad_layer);
    for (size_t s = 0; s < n; s++) eellm_gen_sequence_free(&out[s]);
    return -1;
  }
  return 0;
}

/* ---- sessions (continuous batching) ---------------------------------------------- */

struct eellm_gen_session {
  struct call c;                  /* seqs and undecided: one per cache slot */
  struct eellm_gen_options o;     /* a copy; o.exit_layers points into exit_layers */
  unsigned *exit_layers;
  struct eellm_gen_sequence *outs; /* per slot */
};

struct eellm_gen_session *eellm_gen_session_open(struct eellm_generator *g,
                                                 const struct eellm_gen_options *o, char *err,
                                                 size_t errlen) {
  struct eellm_gen_session *s = calloc(1, sizeof *s);
  if (!s) abort();
  s->o = *o;
  s->exit_layers = gen_xmalloc(o->n_exit_layers * sizeof *s->exit_layers);
  if (o->n_exit_layers)
    memcpy(s->exit_layers, o->exit_layers, o->n_exit_layers * sizeof *s->exit_layers);
  s->o.exit_layers = s->exit_layers;
  size_t n = g->max_batch;
  struct call *c = &s->c;
  if (begin_call(c, g, &s->o, n, err, errlen) != 0) {
    free(s->exit_layers);
    free(s);
    return NULL;
  }
  s->outs = calloc(n, sizeof *s->outs);
  if (!s->outs) abort();
  for (size_t i = 0; i < n; i++) c->seqs[i].done = 1;
  gen_call_init(c);
  g->sessions++;
  return s;
}

long eellm_gen_session_add(struct eellm_gen_session *s, const uint16_t *prompt, size_t len,
                           unsigned max_tokens, uint64_t seed, uint64_t stream, char *err,
                           size_t errlen) {
  struct eellm_generator *g = s->c.g;
  if (check_prompt(g, 0, prompt, len, err, errlen) != 0) return -1;
  size_t slot = 0;
  while (slot < g->max_batch && g->slot_taken[slot]) slot++;
  if (slot == g->max_batch) {
    snprintf(err, errlen, "every one of the generator's %u slots is taken", g->max_batch);
    return -1;
  }
  g->slot_taken[slot] = 1;
  free(s->c.seqs[slot].tokens);
  memset(&s->outs[slot], 0, sizeof s->outs[slot]);
  start_sequence(&s->c, slot, prompt, len, max_tokens, seed, stream, &s->outs[slot]);
  return (long)slot;
}

size_t eellm_gen_session_running(const struct eellm_gen_session *s) {
  size_t n = 0;
  for (size_t i = 0; i < s->c.n_seqs; i++) n += s->c.seqs[i].active && !s->c.seqs[i].done;
  return n;
}

size_t eellm_gen_session_step(struct eellm_gen_session *s) {
  if (eellm_gen_session_running(s) == 0) return 0;
  gen_run_step(&s->c);
  return eellm_gen_session_running(s);
}

long eellm_gen_session_take(struct eellm_gen_session *s, struct eellm_gen_sequence *out) {
  for (size_t slot = 0; slot < s->c.n_seqs; slot++) {
    struct sequence *q = &s->c.seqs[slot];
    if (!q->active || !q->done) continue;
    *out = s->outs[slot];
    memset(&s->outs[slot], 0, sizeof s->outs[slot]);
    free(q->tokens);
    q->tokens = NULL;
    q->active = 0;
    s->c.g->slot_taken[slot] = 0;
    return (long)slot;
  }
  return -1;
}

void eellm_gen_session_close(struct eellm_gen_session *s) {
  if (!s) return;
  starpu_task_wait_for_all();
  struct call *c = &s->c;
  for (size_t slot = 0; slot < c->n_seqs; slot++)
    if (c->seqs[slot].active) {
      eellm_gen_sequence_free(&s->outs[slot]);
      c->g->slot_taken[slot] = 0;
    }
  c->g->sessions--;
  gen_call_end(c);
  end_call(c);
  free(s->outs);
  free(s->exit_layers);
  free(s);
}

float eellm_gen_next_top_p(const struct eellm_gen_options *o, float top_p) {
  if (!(top_p > 0 && o->top_p_decay > 0)) return top_p;
  float next = top_p * o->top_p_decay;
  if (o->top_p_bound > 0 && next < o->top_p_bound) next = o->top_p_bound;
  return next > 0 ? next : top_p; /* never 0, which would turn top-p off */
}

void eellm_generator_speculation(const struct eellm_generator *g, size_t *rounds,
                                 size_t *drafted, size_t *accepted) {
  if (rounds) *rounds = g->spec_rounds;
  if (drafted) *drafted = g->spec_drafted;
  if (accepted) *accepted = g->spec_accepted;
}

unsigned eellm_generator_free_slots(const struct eellm_generator *g) {
  unsigned n = 0;
  for (unsigned i = 0; i < g->max_batch; i++) n += !g->slot_taken[i];
  return n;
}

unsigned eellm_generator_vocab(const struct eellm_generator *g) { return (unsigned)g->vocab; }
