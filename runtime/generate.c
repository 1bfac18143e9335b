/* Early-exit generation with KV caches (generate.h).
 *
 * One step feeds each unfinished sequence's rows that lack keys and values at
 * the deepest layer (its whole prompt at first, then its newest token, plus,
 * under RECOMPUTE, the tokens that left early since) through the layers, as
 * StarPU tasks on packed rows. At each allowed exit the host submits the exit
 * head on the newest row of every sequence still undecided and waits for the
 * choices (confidence, token): the only waits. A sequence whose confidence
 * passes the threshold takes its token there. Then:
 * - RECOMPUTE drops the decided sequences' rows: deeper layers never see them
 *   in this step, and the next step starts again from the first position the
 *   deepest layer lacks, recomputing the shallow layers' keys and values;
 * - PIPELINE keeps every row going through every layer, and once all sequences
 *   have decided it submits the rest of the step at a lower priority without
 *   waiting: the next step's tasks start at once, and each layer's task of the
 *   next step waits (RW on that layer's cache) only for the same layer of this
 *   one. Stage s's tasks touch stage s's weights and caches alone, so each
 *   stage can later live on its own rank; within one process the stages only
 *   rank the catch-up work: the shallower a stage, the sooner the next token
 *   needs its caches, the higher its tasks' priority.
 * Every task reads or writes the per-layer cache handles, so StarPU's
 * sequential consistency orders the writes and reads of keys and values. */
#include "runtime/generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "graph/model.h"
#include "runtime/tokenizer.h"

struct eellm_generator {
  struct eellm_model *m;
  struct eellm_tokenizer *tok;
  unsigned max_batch, context, n_layers;
  size_t d_model, vocab;
  int *exit_at;                /* per layer (0-based): the spec exit reading its output, or -1 */
  size_t n_caches;             /* n_layers, then one per spec exit (BLOCK exits only) */
  float **cache_mem;           /* [max_batch * context, 2 d_model] each, NULL when unused */
  starpu_data_handle_t *cache;
};

static void *xmalloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "eellm generate: out of memory (%zu bytes)\n", bytes);
    abort();
  }
  return p;
}

/* ---- the generator ----------------------------------------------------------- */

static int add_cache(struct eellm_generator *g, size_t i) {
  size_t rows = (size_t)g->max_batch * g->context;
  g->cache_mem[i] = calloc(rows * 2 * g->d_model, sizeof(float));
  if (!g->cache_mem[i]) return -1;
  starpu_matrix_data_register(&g->cache[i], STARPU_MAIN_RAM, (uintptr_t)g->cache_mem[i],
                              2 * g->d_model, 2 * g->d_model, rows, sizeof(float));
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
    if (add_cache(g, l) != 0) return -1;
  }
  for (unsigned k = 0; k < spec->n_exits; k++) {
    g->exit_at[g->m->exits[k].layer - 1] = (int)k;
    if (g->m->exits[k].structure == EELLM__EXIT__STRUCTURE__BLOCK &&
        add_cache(g, spec->n_layers + k) != 0)
      return -1;
  }
  return 0;
}

struct eellm_generator *eellm_generator_open(const char *ckpt, const char *tokenizer_dir,
                                             unsigned max_batch, char *err, size_t errlen) {
  if (max_batch < 1) {
    snprintf(err, errlen, "a batch holds at least one prompt");
    return NULL;
  }
  Eellm__Model *spec = eellm_checkpoint_spec(ckpt, err, errlen);
  if (!spec) return NULL;
  struct eellm_generator *g = calloc(1, sizeof *g);
  if (!g) abort();
  g->m = eellm_model_create(spec, 1, 1, err, errlen);
  eellm_spec_free(spec);
  if (!g->m || eellm_model_load(g->m, ckpt, err, errlen) != 0) goto fail;
  const char *kind = eellm_model_tokenizer(g->m);
  if (!kind) {
    snprintf(err, errlen, "%s: no tokenizer named in the checkpoint's metadata", ckpt);
    goto fail;
  }
  if (!(g->tok = eellm_tokenizer_open(kind, tokenizer_dir, err, errlen))) goto fail;
  spec = g->m->spec;
  if (eellm_tokenizer_vocab_size(g->tok) > spec->vocab_size) {
    snprintf(err, errlen, "%s: tokenizer %s has %u ids, the model only %u", ckpt, kind,
             eellm_tokenizer_vocab_size(g->tok), spec->vocab_size);
    goto fail;
  }
  g->max_batch = max_batch;
  g->context = spec->context_length;
  g->n_layers = spec->n_layers;
  g->d_model = spec->d_model;
  g->vocab = spec->vocab_size;
  if (build_caches(g) != 0) {
    snprintf(err, errlen, "out of memory for the key/value caches of %u sequences", max_batch);
    goto fail;
  }
  return g;
fail:
  eellm_generator_close(g);
  return NULL;
}

void eellm_generator_close(struct eellm_generator *g) {
  if (!g) return;
  starpu_task_wait_for_all();
  for (size_t i = 0; g->cache && i < g->n_caches; i++) {
    if (g->cache_mem[i]) starpu_data_unregister(g->cache[i]);
    free(g->cache_mem[i]);
  }
  free(g->cache);
  free(g->cache_mem);
  free(g->exit_at);
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
  eellm_stage_split(g->m->spec, stages, NULL, 0, stage_layers);
  return stages;
}

int eellm_generator_read_cache(struct eellm_generator *g, size_t sequence, unsigned layer,
                               size_t first, size_t count, float *kv) {
  if (sequence >= g->max_batch || layer < 1 || layer > g->n_layers || first > g->context ||
      count > g->context - first)
    return -1;
  starpu_data_handle_t h = g->cache[layer - 1];
  size_t width = 2 * g->d_model;
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
  memset(s, 0, sizeof *s);
}

/* ---- one call ------------------------------------------------------------------ */

/* A prompt's state during a call. */
struct sequence {
  uint16_t *tokens;  /* prompt, then what was generated: len tokens */
  size_t len, max_len;
  size_t through;    /* positions 0 .. through - 1 have keys and values at every layer */
  int done;
  uint64_t rng;
  float uniform;     /* this step's draw */
  struct eellm_gen_sequence *out;
};

/* Everything one call of eellm_generate holds. */
struct call {
  struct eellm_generator *g;
  const struct eellm_model *m;
  const struct eellm_gen_options *o;
  struct sequence *seqs;
  size_t n_seqs;
  unsigned char *allowed;        /* per layer: its exit may fire */
  unsigned *stage_of;            /* per layer (PIPELINE; 0 under RECOMPUTE) */
  int prio_decide;               /* above every catch-up priority */
  int step;
  void **kept;                   /* host arrays the tasks read, freed at the end */
  size_t n_kept, cap_kept;
  starpu_data_handle_t *handles; /* this step's, unregistered at its end */
  size_t n_handles, cap_handles;
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

static void *keep(struct call *c, size_t bytes) {
  if (c->n_kept == c->cap_kept) {
    c->cap_kept = c->cap_kept ? 2 * c->cap_kept : 64;
    c->kept = realloc(c->kept, c->cap_kept * sizeof *c->kept);
    if (!c->kept) abort();
  }
  return c->kept[c->n_kept++] = xmalloc(bytes);
}

static starpu_data_handle_t track(struct call *c, starpu_data_handle_t h) {
  if (c->n_handles == c->cap_handles) {
    c->cap_handles = c->cap_handles ? 2 * c->cap_handles : 128;
    c->handles = realloc(c->handles, c->cap_handles * sizeof *c->handles);
    if (!c->handles) abort();
  }
  return c->handles[c->n_handles++] = h;
}

/* An activation [rows, cols], allocated by StarPU on first write. */
static starpu_data_handle_t temp(struct call *c, size_t rows, size_t cols) {
  starpu_data_handle_t h;
  starpu_matrix_data_register(&h, -1, 0, cols, cols, rows, sizeof(float));
  return track(c, h);
}

static starpu_data_handle_t host_vector(struct call *c, void *data, size_t n, size_t elemsize) {
  starpu_data_handle_t h;
  starpu_vector_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, n, elemsize);
  return track(c, h);
}

/* The step's handles go once their last task has run. */
static void end_step(struct call *c) {
  for (size_t i = 0; i < c->n_handles; i++) starpu_data_unregister_submit(c->handles[i]);
  c->n_handles = 0;
}

static starpu_data_handle_t param(const struct call *c, int i) {
  return i < 0 ? NULL : c->m->tensors[i].param;
}

static enum eellm_norm_kind norm_kind(const struct call *c) {
  return c->m->spec->norm == EELLM__MODEL__NORM__RMSNORM ? EELLM_RMSNORM : EELLM_LAYERNORM;
}

static struct eellm_task_info task_info(const struct call *c, enum eellm_task_kind kind, int prio,
                                        int layer) {
  struct eellm_task_info ti = {.priority = prio, .kind = kind, .micro = c->step, .layer = layer};
  return ti;
}

/* ---- the layers --------------------------------------------------------------- */

/* out [n, D] = r + proj(act(fc(norm(r)))). */
static starpu_data_handle_t mlp_forward(struct call *c, const struct eellm_layer_params *p,
                                        starpu_data_handle_t r, size_t n,
                                        const struct eellm_task_info *ti) {
  const struct eellm_model *m = c->m;
  size_t d = m->spec->d_model;
  starpu_data_handle_t ln = temp(c, n, d), fc = temp(c, n, m->fc_out);
  starpu_data_handle_t a = temp(c, n, m->d_ffn), out = temp(c, n, d);
  eellm_insert_norm_fwd(r, param(c, p->ln2_w), param(c, p->ln2_b), ln, temp(c, n, 2), norm_kind(c),
                        m->spec->norm_eps, ti);
  eellm_insert_linear_fwd(ln, param(c, p->fc_w), param(c, p->fc_b), NULL, fc, 0, ti);
  eellm_insert_activation_fwd(fc, a, (enum eellm_activation)m->spec->activation, ti);
  eellm_insert_linear_fwd(a, param(c, p->proj_w), param(c, p->proj_b), r, out, 0, ti);
  return out;
}

/* Layer p on the flow's rows x: keys and values into `cache`; sets *r to the
 * post-attention residual and returns the layer's output. */
static starpu_data_handle_t layer_forward(struct call *c, const struct flow *f,
                                          const struct eellm_layer_params *p,
                                          starpu_data_handle_t x, starpu_data_handle_t cache,
                                          starpu_data_handle_t *r,
                                          const struct eellm_task_info *ti) {
  const Eellm__Model *spec = c->m->spec;
  size_t n = f->n, d = spec->d_model;
  starpu_data_handle_t ln = temp(c, n, d), qkv = temp(c, n, 3 * d), att = temp(c, n, d);
  *r = temp(c, n, d);
  eellm_insert_norm_fwd(x, param(c, p->ln1_w), param(c, p->ln1_b), ln, temp(c, n, 2), norm_kind(c),
                        spec->norm_eps, ti);
  eellm_insert_linear_fwd(ln, param(c, p->qkv_w), param(c, p->qkv_b), NULL, qkv, 0, ti);
  eellm_insert_attention_cached(qkv, f->positions_h, f->slots_h, cache, att, spec->context_length,
                                spec->n_heads, spec->positions == EELLM__MODEL__POSITIONS__ROPE,
                                spec->rope_theta, ti);
  eellm_insert_linear_fwd(att, param(c, p->o_w), param(c, p->o_b), x, *r, 0, ti);
  return mlp_forward(c, p, *r, n, ti);
}

/* ---- heads and decisions ----------------------------------------------------- */

/* An exit head, or the final head (exit == n_exits). */
struct head {
  unsigned exit, layer;
  Eellm__Exit__Structure structure;
  const struct eellm_layer_params *block;
  int norm_w, norm_b, head_w;
  float temperature;
};

static struct head head_of(const struct call *c, unsigned exit) {
  const struct eellm_model *m = c->m;
  if (exit == m->spec->n_exits)
    return (struct head){exit, m->spec->n_layers, EELLM__EXIT__STRUCTURE__NORM, NULL,
                         m->lnf_w, m->lnf_b, m->head_w, 1.0f};
  const struct eellm_exit_params *e = &m->exits[exit];
  return (struct head){exit, e->layer, e->structure, &e->block, e->lnf_w, e->lnf_b, e->head_w,
                       e->temperature};
}

/* Logits [M, V] of head h on the flow rows `rows` (M of them). */
static starpu_data_handle_t head_logits(struct call *c, const struct flow *f, const struct head *h,
                                        const int32_t *rows, size_t M,
                                        const struct eellm_task_info *ti) {
  size_t d = c->m->spec->d_model;
  starpu_data_handle_t src = h->structure == EELLM__EXIT__STRUCTURE__MLP     ? f->r
                             : h->structure == EELLM__EXIT__STRUCTURE__BLOCK ? f->block
                                                                              : f->x;
  starpu_data_handle_t y = temp(c, M, d);
  eellm_insert_gather_rows(src, host_vector(c, (void *)rows, M, sizeof *rows), y, ti);
  if (h->structure == EELLM__EXIT__STRUCTURE__MLP) y = mlp_forward(c, h->block, y, M, ti);
  if (h->norm_w >= 0) {
    starpu_data_handle_t normed = temp(c, M, d);
    eellm_insert_norm_fwd(y, param(c, h->norm_w), param(c, h->norm_b), normed, temp(c, M, 2),
                          norm_kind(c), c->m->spec->norm_eps, ti);
    y = normed;
  }
  starpu_data_handle_t logits = temp(c, M, c->m->spec->vocab_size);
  eellm_insert_linear_fwd(y, param(c, h->head_w), NULL, NULL, logits, 1, ti);
  return logits;
}

/* Appends a token to sequence s and says whether the sequence is finished. */
static void emit(struct call *c, size_t s, const struct eellm_token_choice *choice,
                 unsigned layer, const float *logits) {
  struct sequence *q = &c->seqs[s];
  struct eellm_gen_sequence *out = q->out;
  uint16_t token = (uint16_t)choice->token;
  out->tokens[out->n] = token;
  out->exit_layers[out->n] = layer;
  out->logprobs[out->n] = choice->logprob;
  if (out->logits) memcpy(out->logits + out->n * c->g->vocab, logits, c->g->vocab * sizeof *logits);
  out->n++;
  q->tokens[q->len++] = token;
  if (c->o->on_token) c->o->on_token(c->o->ctx, s, token, layer, choice->logprob);
  q->done = q->len >= q->max_len ||
            (c->o->stop_at_eot && token == eellm_tokenizer_eot_id(c->g->tok));
}

static int passes(const struct call *c, const struct eellm_token_choice *choice) {
  return choice->confidence >= c->o->threshold;
}

/* Head h on the newest row of each undecided sequence (undecided[0..n_und-1]);
 * waits for the choices and emits the tokens that pass (all of them at the final
 * head). Returns how many stay undecided, compacted at the front of undecided. */
static size_t decide(struct call *c, const struct flow *f, const struct head *h, size_t *undecided,
                     size_t n_und) {
  int final = h->exit == c->m->spec->n_exits;
  int32_t *rows = keep(c, n_und * sizeof *rows);
  float *uniforms = keep(c, n_und * sizeof *uniforms);
  for (size_t i = 0; i < n_und; i++) {
    for (size_t row = 0; row < f->n; row++)
      if (f->seq[row] == undecided[i]) rows[i] = (int32_t)row;
    uniforms[i] = c->seqs[undecided[i]].uniform;
  }
  struct eellm_task_info ti =
      task_info(c, final ? EELLM_KIND_FORWARD : EELLM_KIND_EXIT, c->prio_decide, (int)h->layer - 1);
  starpu_data_handle_t logits = head_logits(c, f, h, rows, n_und, &ti);
  struct eellm_token_choice *choices = keep(c, n_und * sizeof *choices);
  starpu_data_handle_t choices_h = host_vector(c, choices, n_und, sizeof *choices);
  struct eellm_sampling s = {h->temperature, c->o->rule == EELLM_EXIT_ENTROPY, c->o->temperature,
                             c->o->top_k, c->o->top_p};
  int sampling = c->o->temperature > 0;
  eellm_insert_next_token(logits, sampling ? host_vector(c, uniforms, n_und, sizeof *uniforms) : NULL,
                          choices_h, &s, &ti);
  starpu_data_acquire(choices_h, STARPU_R);
  const float *all_logits = NULL;
  size_t ld = 0;
  if (c->o->keep_logits) {
    starpu_data_acquire(logits, STARPU_R);
    all_logits = (const float *)starpu_matrix_get_local_ptr(logits);
    ld = starpu_matrix_get_local_ld(logits);
  }
  size_t still = 0;
  for (size_t i = 0; i < n_und; i++) {
    if (final || passes(c, &choices[i]))
      emit(c, undecided[i], &choices[i], h->layer, all_logits ? all_logits + i * ld : NULL);
    else
      undecided[still++] = undecided[i];
  }
  if (all_logits) starpu_data_release(logits);
  starpu_data_release(choices_h);
  return still;
}

/* ---- steps ------------------------------------------------------------------------ */

/* The rows of the unfinished sequences: positions through .. len - 1 of each. */
static void start_flow(struct call *c, struct flow *f, size_t *undecided, size_t *n_und) {
  memset(f, 0, sizeof *f);
  *n_und = 0;
  for (size_t s = 0; s < c->n_seqs; s++)
    if (!c->seqs[s].done) {
      f->n += c->seqs[s].len - c->seqs[s].through;
      undecided[(*n_und)++] = s;
    }
  f->positions = keep(c, f->n * sizeof *f->positions);
  f->slots = keep(c, f->n * sizeof *f->slots);
  f->seq = keep(c, f->n * sizeof *f->seq);
  int32_t *tokens = keep(c, f->n * sizeof *tokens);
  size_t row = 0;
  for (size_t i = 0; i < *n_und; i++) {
    struct sequence *q = &c->seqs[undecided[i]];
    for (size_t p = q->through; p < q->len; p++, row++) {
      f->positions[row] = (int32_t)p;
      f->slots[row] = (int32_t)undecided[i];
      f->seq[row] = undecided[i];
      tokens[row] = q->tokens[p];
    }
  }
  f->positions_h = host_vector(c, f->positions, f->n, sizeof(int32_t));
  f->slots_h = host_vector(c, f->slots, f->n, sizeof(int32_t));
  f->x = temp(c, f->n, c->m->spec->d_model);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  eellm_insert_embed_at(host_vector(c, tokens, f->n, sizeof *tokens), f->positions_h,
                        param(c, c->m->wte), param(c, c->m->wpe), f->x, &ti);
}

/* Keeps only the rows of the sequences in undecided[0..n_und-1] (RECOMPUTE). */
static void narrow_flow(struct call *c, struct flow *f, const size_t *undecided, size_t n_und) {
  size_t n = 0;
  int32_t *rows = keep(c, f->n * sizeof *rows);
  for (size_t row = 0; row < f->n; row++)
    for (size_t i = 0; i < n_und; i++)
      if (f->seq[row] == undecided[i]) rows[n++] = (int32_t)row;
  if (n == f->n) return;
  struct flow narrow = {.n = n};
  narrow.positions = keep(c, n * sizeof *narrow.positions);
  narrow.slots = keep(c, n * sizeof *narrow.slots);
  narrow.seq = keep(c, n * sizeof *narrow.seq);
  for (size_t i = 0; i < n; i++) {
    narrow.positions[i] = f->positions[rows[i]];
    narrow.slots[i] = f->slots[rows[i]];
    narrow.seq[i] = f->seq[rows[i]];
  }
  narrow.positions_h = host_vector(c, narrow.positions, n, sizeof(int32_t));
  narrow.slots_h = host_vector(c, narrow.slots, n, sizeof(int32_t));
  narrow.x = temp(c, n, c->m->spec->d_model);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  eellm_insert_gather_rows(f->x, host_vector(c, rows, n, sizeof *rows), narrow.x, &ti);
  *f = narrow;
}

/* A BLOCK exit's private layer on every row of the flow (its cache needs them all). */
static void block_forward(struct call *c, struct flow *f, unsigned exit,
                          const struct eellm_task_info *ti) {
  starpu_data_handle_t r;
  f->block = layer_forward(c, f, &c->m->exits[exit].block, f->x,
                           c->g->cache[c->m->spec->n_layers + exit], &r, ti);
}

static void draw_uniforms(struct call *c) {
  for (size_t s = 0; s < c->n_seqs; s++) {
    uint64_t z = (c->seqs[s].rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    c->seqs[s].uniform = (float)((z ^ (z >> 31)) >> 40) * 0x1p-24f;
  }
}

/* One token for every unfinished sequence. */
static void step(struct call *c, size_t *undecided) {
  const Eellm__Model *spec = c->m->spec;
  int pipeline = c->o->method == EELLM_GEN_PIPELINE;
  struct flow f;
  size_t n_und;
  start_flow(c, &f, undecided, &n_und);
  draw_uniforms(c);
  unsigned l = 0;
  for (; l < spec->n_layers && n_und > 0; l++) {
    struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, (int)l);
    f.x = layer_forward(c, &f, &c->m->layers[l], f.x, c->g->cache[l], &f.r, &ti);
    int k = c->g->exit_at[l];
    if (k < 0 || !c->allowed[l]) continue;
    if (c->m->exits[k].structure == EELLM__EXIT__STRUCTURE__BLOCK) block_forward(c, &f, k, &ti);
    struct head h = head_of(c, (unsigned)k);
    size_t before = n_und;
    n_und = decide(c, &f, &h, undecided, n_und);
    if (!pipeline && n_und > 0 && n_und < before && l + 1 < spec->n_layers)
      narrow_flow(c, &f, undecided, n_und);
  }
  if (n_und > 0) {
    struct head final = head_of(c, spec->n_exits);
    decide(c, &f, &final, undecided, n_und);
    n_und = 0;
  }
  /* PIPELINE: the rest of every row's forward only fills the caches. */
  for (; pipeline && l < spec->n_layers; l++) {
    int prio = c->prio_decide - 1 - (int)c->stage_of[l];
    struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, prio, (int)l);
    f.x = layer_forward(c, &f, &c->m->layers[l], f.x, c->g->cache[l], &f.r, &ti);
    int k = c->g->exit_at[l];
    if (k >= 0 && c->allowed[l] && c->m->exits[k].structure == EELLM__EXIT__STRUCTURE__BLOCK)
      block_forward(c, &f, k, &ti);
  }
  /* Rows that went through every layer: RECOMPUTE keeps the last flow's. */
  for (size_t row = 0; row < f.n; row++)
    if (pipeline || l == spec->n_layers) c->seqs[f.seq[row]].through = (size_t)f.positions[row] + 1;
  end_step(c);
  c->step++;
}

/* ---- eellm_generate ------------------------------------------------------------------ */

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
  if (o->method != EELLM_GEN_RECOMPUTE && o->method != EELLM_GEN_PIPELINE) {
    snprintf(err, errlen, "unknown generation method %d", (int)o->method);
    return -1;
  }
  if (!(o->temperature >= 0 && isfinite(o->temperature)) || !(o->top_p >= 0 && o->top_p <= 1)) {
    snprintf(err, errlen, "temperature %g or top_p %g out of range (temperature >= 0, top_p in [0, 1])",
             (double)o->temperature, (double)o->top_p);
    return -1;
  }
  if (o->stages > c->g->n_layers) {
    snprintf(err, errlen, "%u stages for %u layers", o->stages, c->g->n_layers);
    return -1;
  }
  return 0;
}

/* Which exits may fire: none with exits off, else the listed layers (all when none). */
static int allowed_exits(struct call *c, char *err, size_t errlen) {
  const struct eellm_gen_options *o = c->o;
  unsigned n_layers = c->g->n_layers;
  int on = o->use_early_exit && o->threshold < 1;
  for (unsigned l = 0; l < n_layers; l++) c->allowed[l] = on && !o->n_exit_layers && c->g->exit_at[l] >= 0;
  for (size_t i = 0; i < o->n_exit_layers; i++) {
    unsigned layer = o->exit_layers[i];
    if (layer < 1 || layer > n_layers || (c->g->exit_at[layer - 1] < 0 && layer != n_layers)) {
      snprintf(err, errlen, "exit layer %u: the model has no exit there", layer);
      return -1;
    }
    c->allowed[layer - 1] = on && c->g->exit_at[layer - 1] >= 0;
  }
  return 0;
}

static int check_prompts(const struct eellm_generator *g, const uint16_t *const *prompts,
                         const size_t *lens, size_t n, char *err, size_t errlen) {
  if (n > g->max_batch) {
    snprintf(err, errlen, "%zu prompts: this generator takes at most %u at once", n, g->max_batch);
    return -1;
  }
  for (size_t s = 0; s < n; s++) {
    if (lens[s] < 1 || lens[s] > g->context) {
      snprintf(err, errlen, "prompt %zu has %zu tokens: need 1..%u (the context)", s, lens[s],
               g->context);
      return -1;
    }
    for (size_t i = 0; i < lens[s]; i++)
      if (prompts[s][i] >= g->vocab) {
        snprintf(err, errlen, "prompt %zu: token id %u outside the vocabulary (%zu)", s,
                 (unsigned)prompts[s][i], g->vocab);
        return -1;
      }
  }
  return 0;
}

static void start_sequence(struct call *c, size_t s, const uint16_t *prompt, size_t len,
                           struct eellm_gen_sequence *out) {
  struct sequence *q = &c->seqs[s];
  size_t room = c->g->context - len, n_max = c->o->max_tokens < room ? c->o->max_tokens : room;
  q->tokens = keep(c, (len + n_max) * sizeof *q->tokens);
  memcpy(q->tokens, prompt, len * sizeof *prompt);
  q->len = len;
  q->max_len = len + n_max;
  q->done = n_max == 0;
  q->rng = c->o->seed * 0x2545f4914f6cdd1dull + s;
  q->out = out;
  memset(out, 0, sizeof *out);
  out->tokens = xmalloc(n_max * sizeof *out->tokens);
  out->exit_layers = xmalloc(n_max * sizeof *out->exit_layers);
  out->logprobs = xmalloc(n_max * sizeof *out->logprobs);
  if (c->o->keep_logits) out->logits = xmalloc(n_max * c->g->vocab * sizeof *out->logits);
}

static void end_call(struct call *c) {
  starpu_task_wait_for_all();
  for (size_t i = 0; i < c->n_kept; i++) free(c->kept[i]);
  free(c->kept);
  free(c->handles);
  free(c->seqs);
  free(c->allowed);
  free(c->stage_of);
}

/* PIPELINE: each layer's stage, and a decision priority above the stages'. */
static void assign_stages(struct call *c) {
  unsigned stages = 1;
  if (c->o->method == EELLM_GEN_PIPELINE) {
    unsigned *stage_layers = keep(c, c->g->n_layers * sizeof *stage_layers);
    stages = eellm_generator_stages(c->g, c->o->stages, stage_layers);
    for (unsigned s = 0, l = 0; s < stages; s++)
      for (unsigned i = 0; i < stage_layers[s]; i++) c->stage_of[l++] = s;
  }
  c->prio_decide = (int)stages;
}

int eellm_generate(struct eellm_generator *g, const uint16_t *const *prompts,
                   const size_t *prompt_lens, size_t n, const struct eellm_gen_options *o,
                   struct eellm_gen_sequence *out, char *err, size_t errlen) {
  struct call c = {.g = g, .m = g->m, .o = o, .n_seqs = n};
  for (size_t s = 0; s < n; s++) memset(&out[s], 0, sizeof out[s]);
  c.allowed = calloc(g->n_layers, 1);
  c.stage_of = calloc(g->n_layers, sizeof *c.stage_of);
  c.seqs = calloc(n ? n : 1, sizeof *c.seqs);
  if (!c.allowed || !c.stage_of || !c.seqs) abort();
  if (check_options(&c, o, err, errlen) != 0 || allowed_exits(&c, err, errlen) != 0 ||
      check_prompts(g, prompts, prompt_lens, n, err, errlen) != 0) {
    end_call(&c);
    return -1;
  }
  assign_stages(&c);
  for (size_t s = 0; s < n; s++) start_sequence(&c, s, prompts[s], prompt_lens[s], &out[s]);
  size_t *undecided = keep(&c, (n ? n : 1) * sizeof *undecided);
  for (;;) {
    size_t active = 0;
    for (size_t s = 0; s < n; s++) active += !c.seqs[s].done;
    if (!active) break;
    step(&c, undecided);
  }
  end_call(&c);
  return 0;
}
