/* The steps of early-exit generation as StarPU tasks.
 *
 * One step feeds each unfinished sequence's rows that lack keys and values at
 * the deepest layer (its whole prompt at first, then its newest token, plus,
 * under RECOMPUTE, the tokens that left early since) through the layers, as
 * tasks on packed rows. At each allowed exit an exit head runs on the newest
 * row of every sequence still undecided, and a task turns its logits into
 * choices (confidence, token). Nothing waits for them: an asynchronous acquire
 * of the choices calls back, the callback emits the tokens whose confidence
 * passes and submits what follows, up to the next decision. So the workers
 * never idle while a host thread wakes up between two decisions. Then:
 * - RECOMPUTE drops the decided sequences' rows: deeper layers never see them
 *   in this step, and the next step starts again from the first position the
 *   deepest layer lacks, recomputing the shallow layers' keys and values;
 * - PIPELINE keeps every row going through every layer, so the layers up to
 *   the next decision go in before this one is known; once all sequences have
 *   decided, the rest of the step is submitted at lower priorities and the next
 *   step right after it: each layer's task of the next step waits (RW on that
 *   layer's cache) only for the same layer of this one, so the next token runs
 *   through the first stages while the later ones fill their caches.
 *   Stage s's tasks touch stage s's weights and caches alone, so each stage can
 *   later live on its own rank; within one process the stages rank the
 *   catch-up work: the shallower a stage, the sooner the next token needs its
 *   caches, the higher its tasks' priority.
 * Every attention task reads and writes its layer's cache handle, so StarPU's
 * sequential consistency orders the writes and reads of keys and values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/generate/gen_internal.h"
#include "runtime/tokenize/tokenizer.h"

void *gen_xmalloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "eellm generate: out of memory (%zu bytes)\n", bytes);
    abort();
  }
  return p;
}

static void *keep(struct call *c, size_t bytes) {
  if (c->n_kept == c->cap_kept) {
    c->cap_kept = c->cap_kept ? 2 * c->cap_kept : 64;
    c->kept = realloc(c->kept, c->cap_kept * sizeof *c->kept);
    if (!c->kept) abort();
  }
  return c->kept[c->n_kept++] = gen_xmalloc(bytes);
}

static void free_kept(struct call *c) {
  for (size_t i = 0; i < c->n_kept; i++) free(c->kept[i]);
  c->n_kept = 0;
}

/* An activation [rows, cols]. */
static starpu_data_handle_t temp(struct call *c, size_t rows, size_t cols) {
  return gen_pool_matrix(c->pool, rows, cols);
}

static struct eellm_task_info task_info(const struct call *c, enum eellm_task_kind kind, int prio,
                                        int layer) {
  struct eellm_task_info ti = {.priority = prio, .kind = kind, .micro = c->step, .layer = layer};
  return ti;
}

/* A task input: a vector set to n elements of elemsize bytes. */
static starpu_data_handle_t input(struct call *c, const void *data, size_t n, size_t elemsize) {
  starpu_data_handle_t h = gen_pool_vector(c->pool, n, elemsize);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_OTHER, c->prio_decide, -1);
  eellm_insert_vector_set(h, data, &ti);
  return h;
}

static starpu_data_handle_t param(const struct call *c, int i) {
  return i < 0 ? NULL : c->m->tensors[i].param;
}

static enum eellm_norm_kind norm_kind(const struct call *c) {
  return c->m->spec->norm == EELLM__MODEL__NORM__RMSNORM ? EELLM_RMSNORM : EELLM_LAYERNORM;
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
static starpu_data_handle_t layer_forward(struct call *c, const struct eellm_layer_params *p,
                                          starpu_data_handle_t x, starpu_data_handle_t cache,
                                          starpu_data_handle_t *r,
                                          const struct eellm_task_info *ti) {
  const Eellm__Model *spec = c->m->spec;
  size_t n = c->f.n, d = spec->d_model;
  starpu_data_handle_t ln = temp(c, n, d), qkv = temp(c, n, 3 * d), att = temp(c, n, d);
  *r = temp(c, n, d);
  eellm_insert_norm_fwd(x, param(c, p->ln1_w), param(c, p->ln1_b), ln, temp(c, n, 2), norm_kind(c),
                        spec->norm_eps, ti);
  eellm_insert_linear_fwd(ln, param(c, p->qkv_w), param(c, p->qkv_b), NULL, qkv, 0, ti);
  eellm_insert_attention_cached(qkv, c->f.positions_h, c->f.slots_h, cache, att,
                                spec->context_length, spec->n_heads,
                                spec->positions == EELLM__MODEL__POSITIONS__ROPE, spec->rope_theta,
                                ti);
  eellm_insert_linear_fwd(att, param(c, p->o_w), param(c, p->o_b), x, *r, 0, ti);
  return mlp_forward(c, p, *r, n, ti);
}

/* Backbone layer l on the flow, and the private layer of a BLOCK exit reading
 * its output when that exit may fire (its cache needs every row). */
static void submit_layer(struct call *c, unsigned l, int prio) {
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, prio, (int)l);
  c->f.x = layer_forward(c, &c->m->layers[l], c->f.x, c->g->cache[l], &c->f.r, &ti);
  int k = c->g->exit_at[l];
  if (k < 0 || !c->allowed[l] || c->m->exits[k].structure != EELLM__EXIT__STRUCTURE__BLOCK) return;
  starpu_data_handle_t r;
  c->f.block = layer_forward(c, &c->m->exits[k].block, c->f.x,
                             c->g->cache[c->m->spec->n_layers + (unsigned)k], &r, &ti);
}

/* ---- heads -------------------------------------------------------------------- */

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
static starpu_data_handle_t head_logits(struct call *c, const struct head *h, const int32_t *rows,
                                        size_t M, const struct eellm_task_info *ti) {
  size_t d = c->m->spec->d_model;
  starpu_data_handle_t src = h->structure == EELLM__EXIT__STRUCTURE__MLP     ? c->f.r
                             : h->structure == EELLM__EXIT__STRUCTURE__BLOCK ? c->f.block
                                                                              : c->f.x;
  starpu_data_handle_t y = temp(c, M, d);
  eellm_insert_gather_rows(src, input(c, rows, M, sizeof *rows), y, ti);
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

/* Head `exit` on the newest row of each undecided sequence, and the task that
 * turns its logits into choices. */
static void submit_head(struct call *c, unsigned exit) {
  c->head = head_of(c, exit);
  size_t M = c->n_und;
  int32_t *rows = keep(c, M * sizeof *rows);
  float *uniforms = keep(c, M * sizeof *uniforms);
  for (size_t i = 0; i < M; i++) {
    for (size_t row = 0; row < c->f.n; row++)
      if (c->f.seq[row] == c->undecided[i]) rows[i] = (int32_t)row;
    uniforms[i] = c->seqs[c->undecided[i]].uniform;
  }
  int final = exit == c->m->spec->n_exits;
  struct eellm_task_info ti = task_info(c, final ? EELLM_KIND_FORWARD : EELLM_KIND_EXIT,
                                        c->prio_decide, (int)c->head.layer - 1);
  c->logits = head_logits(c, &c->head, rows, M, &ti);
  c->choices = gen_pool_vector(c->pool, M, sizeof(struct eellm_token_choice));
  const struct eellm_gen_options *o = c->o;
  struct eellm_sampling s = {c->head.temperature, o->rule == EELLM_EXIT_ENTROPY, o->temperature,
                             o->top_k, o->top_p};
  starpu_data_handle_t u = o->temperature > 0 ? input(c, uniforms, M, sizeof *uniforms) : NULL;
  eellm_insert_next_token(c->logits, u, c->choices, &s, &ti);
}

/* ---- decisions -------------------------------------------------------------------- */

/* Appends a token to sequence s; marks the sequence done when it is. */
static void emit(struct call *c, size_t s, const struct eellm_token_choice *choice,
                 const float *logits) {
  struct sequence *q = &c->seqs[s];
  struct eellm_gen_sequence *out = q->out;
  uint16_t token = (uint16_t)choice->token;
  unsigned layer = c->head.layer;
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

/* Keeps only the rows of the undecided sequences (RECOMPUTE). */
static void narrow_flow(struct call *c) {
  struct flow *f = &c->f;
  size_t n = 0;
  int32_t *rows = keep(c, f->n * sizeof *rows);
  for (size_t row = 0; row < f->n; row++)
    for (size_t i = 0; i < c->n_und; i++)
      if (f->seq[row] == c->undecided[i]) rows[n++] = (int32_t)row;
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
  narrow.positions_h = input(c, narrow.positions, n, sizeof(int32_t));
  narrow.slots_h = input(c, narrow.slots, n, sizeof(int32_t));
  narrow.x = temp(c, n, c->m->spec->d_model);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  eellm_insert_gather_rows(f->x, input(c, rows, n, sizeof *rows), narrow.x, &ti);
  *f = narrow;
}

/* With the choices (and logits) acquired: emits the tokens that pass (all of
 * them at the final head), releases the data. */
static void take_choices(struct call *c) {
  const struct eellm_token_choice *choices =
      (const struct eellm_token_choice *)starpu_vector_get_local_ptr(c->choices);
  const float *logits = NULL;
  size_t ld = 0;
  if (c->o->keep_logits) {
    logits = (const float *)starpu_matrix_get_local_ptr(c->logits);
    ld = starpu_matrix_get_local_ld(c->logits);
  }
  int final = c->head.exit == c->m->spec->n_exits;
  size_t still = 0, before = c->n_und;
  for (size_t i = 0; i < before; i++) {
    if (final || choices[i].confidence >= c->o->threshold)
      emit(c, c->undecided[i], &choices[i], logits ? logits + i * ld : NULL);
    else
      c->undecided[still++] = c->undecided[i];
  }
  c->n_und = still;
  starpu_data_release(c->choices);
  if (logits) starpu_data_release(c->logits);
  if (c->o->method == EELLM_GEN_RECOMPUTE && still > 0 && still < before &&
      c->layer < c->m->spec->n_layers)
    narrow_flow(c);
}

/* ---- steps ------------------------------------------------------------------------ */

static void draw_uniforms(struct call *c) {
  for (size_t s = 0; s < c->n_seqs; s++) {
    uint64_t z = (c->seqs[s].rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    c->seqs[s].uniform = (float)((z ^ (z >> 31)) >> 40) * 0x1p-24f;
  }
}

/* A step for the unfinished sequences: their rows (positions through .. len - 1
 * of each), embedded. Returns 0 when every sequence has finished. */
static int begin_step(struct call *c) {
  struct flow *f = &c->f;
  memset(f, 0, sizeof *f);
  c->n_und = 0;
  for (size_t s = 0; s < c->n_seqs; s++)
    if (!c->seqs[s].done) {
      f->n += c->seqs[s].len - c->seqs[s].through;
      c->undecided[c->n_und++] = s;
    }
  if (c->n_und == 0) return 0;
  c->pool = c->g->pools[c->step % 2];
  gen_pool_reset(c->pool);
  f->positions = keep(c, f->n * sizeof *f->positions);
  f->slots = keep(c, f->n * sizeof *f->slots);
  f->seq = keep(c, f->n * sizeof *f->seq);
  int32_t *tokens = keep(c, f->n * sizeof *tokens);
  size_t row = 0;
  for (size_t i = 0; i < c->n_und; i++) {
    struct sequence *q = &c->seqs[c->undecided[i]];
    for (size_t p = q->through; p < q->len; p++, row++) {
      f->positions[row] = (int32_t)p;
      f->slots[row] = (int32_t)c->undecided[i];
      f->seq[row] = c->undecided[i];
      tokens[row] = q->tokens[p];
    }
  }
  f->positions_h = input(c, f->positions, f->n, sizeof(int32_t));
  f->slots_h = input(c, f->slots, f->n, sizeof(int32_t));
  f->x = temp(c, f->n, c->m->spec->d_model);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  eellm_insert_embed_at(input(c, tokens, f->n, sizeof *tokens), f->positions_h,
                        param(c, c->m->wte), param(c, c->m->wpe), f->x, &ti);
  draw_uniforms(c);
  c->layer = 0;
  c->next_point = 0;
  c->in_step = 1;
  return 1;
}

/* Every sequence has its token: PIPELINE submits the rest of every row's
 * forward, which only fills the caches; rows that went through every layer
 * (all of them under PIPELINE) count as through. */
static void end_step(struct call *c) {
  unsigned n_layers = c->m->spec->n_layers;
  int pipeline = c->o->method == EELLM_GEN_PIPELINE;
  for (; pipeline && c->layer < n_layers; c->layer++)
    submit_layer(c, c->layer, c->prio_decide - 1 - (int)c->stage_of[c->layer]);
  for (size_t row = 0; row < c->f.n; row++)
    if (c->layer == n_layers) c->seqs[c->f.seq[row]].through = (size_t)c->f.positions[row] + 1;
  free_kept(c);
  c->step++;
  c->in_step = 0;
}

static void submit_layers_to(struct call *c, unsigned layer, int prio) {
  for (; c->layer < layer; c->layer++) submit_layer(c, c->layer, prio);
}

static unsigned point_layer(const struct call *c, unsigned point) {
  unsigned exit = c->points[point];
  return exit == c->m->spec->n_exits ? c->m->spec->n_layers : c->m->exits[exit].layer;
}

/* Submits tasks up to the next decision: returns 1 with a head submitted, 0
 * when every sequence has finished. PIPELINE goes on to the layers up to the
 * following decision: every row needs them whatever this decision is. */
static int submit_until_decision(struct call *c) {
  for (;;) {
    if (!c->in_step && !begin_step(c)) return 0;
    if (c->n_und > 0) {
      unsigned point = c->next_point++;
      submit_layers_to(c, point_layer(c, point), c->prio_decide);
      submit_head(c, c->points[point]);
      if (c->o->method == EELLM_GEN_PIPELINE && c->next_point < c->n_points)
        submit_layers_to(c, point_layer(c, c->next_point), c->prio_decide);
      return 1;
    }
    end_step(c);
  }
}

/* ---- the chain of decisions ------------------------------------------------------ */

static int second_to_arrive(struct call *c) {
  pthread_mutex_lock(&c->lock);
  int second = ++c->arrivals == 2;
  if (second) c->arrivals = 0;
  pthread_mutex_unlock(&c->lock);
  return second;
}

static void finish(struct call *c) {
  pthread_mutex_lock(&c->lock);
  c->finished = 1;
  pthread_cond_signal(&c->finished_cv);
  pthread_mutex_unlock(&c->lock);
}

static void go_on(struct call *c);

static void on_choices(void *arg) {
  struct call *c = arg;
  if (second_to_arrive(c)) go_on(c);
}

static void on_logits(void *arg) {
  struct call *c = arg;
  starpu_data_acquire_cb(c->choices, STARPU_R, on_choices, c);
}

/* Asks StarPU for the choices (and the logits first, when kept). */
static void await_choices(struct call *c) {
  if (c->o->keep_logits)
    starpu_data_acquire_cb(c->logits, STARPU_R, on_logits, c);
  else
    starpu_data_acquire_cb(c->choices, STARPU_R, on_choices, c);
}

/* With the choices at hand: emits, submits up to the next decision and asks
 * for its choices; goes on itself when they came before it let go (a loop, so
 * that choices arriving at once never deepen the stack). */
static void go_on(struct call *c) {
  do {
    take_choices(c);
    if (!submit_until_decision(c)) {
      finish(c);
      return;
    }
    await_choices(c);
  } while (second_to_arrive(c));
}

void gen_run(struct call *c) {
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->finished_cv, NULL);
  if (!submit_until_decision(c)) {
    finish(c);
  } else {
    await_choices(c);
    if (second_to_arrive(c)) go_on(c);
  }
  pthread_mutex_lock(&c->lock);
  while (!c->finished) pthread_cond_wait(&c->finished_cv, &c->lock);
  pthread_mutex_unlock(&c->lock);
  starpu_task_wait_for_all();
  free_kept(c);
  free(c->kept);
  pthread_cond_destroy(&c->finished_cv);
  pthread_mutex_destroy(&c->lock);
}
