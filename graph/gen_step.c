/* The steps of early-exit generation as StarPU tasks on the transformer
 * (transformer.h), with cached attention; runtime/generate/generate.c sets up
 * each call.
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

#include "eellm/tokenizer.h"
#include "graph/gen_step.h"
#include "runtime/engine/splitmix.h"

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
  return eellm_pool_matrix(c->pool, rows, cols);
}

static struct eellm_task_info task_info(const struct call *c, enum eellm_task_kind kind, int prio,
                                        int layer) {
  struct eellm_task_info ti = {.priority = prio, .kind = kind, .micro = c->step, .layer = layer};
  return ti;
}

/* A task input: a vector set to n elements of elemsize bytes. */
static starpu_data_handle_t input(struct call *c, const void *data, size_t n, size_t elemsize) {
  starpu_data_handle_t h = eellm_pool_vector(c->pool, n, elemsize);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_OTHER, c->prio_decide, -1);
  eellm_insert_vector_set(h, data, &ti);
  return h;
}

/* The transformer on n rows of this step, attending over the caches at the
 * flow's positions. */
static struct eellm_pass pass_of(const struct call *c, size_t n) {
  return (struct eellm_pass){.m = c->m, .rows = n, .pool = c->pool,
                             .positions = c->f.positions_h, .slots = c->f.slots_h};
}

/* ---- the layers --------------------------------------------------------------- */

/* Backbone layer l on the flow, and the private layer of a BLOCK exit reading
 * its output when that exit may fire (its cache needs every row). */
static void submit_layer(struct call *c, unsigned l, int prio) {
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, prio, (int)l);
  struct eellm_pass p = pass_of(c, c->f.n);
  struct eellm_layer_acts a;
  eellm_layer_forward(&p, &c->m->layers[l], c->f.x, c->g->cache[l], &a, &ti);
  c->f.x = a.mlp.out;
  c->f.r = a.r;
  int k = c->g->exit_at[l];
  if (k < 0 || !c->allowed[l] || c->m->exits[k].structure != EELLM__EXIT__STRUCTURE__BLOCK) return;
  struct eellm_head h = eellm_head_of(c->m, (unsigned)k);
  c->f.block = eellm_body_forward(&p, &h, c->f.x, c->g->cache[c->m->spec->n_layers + (unsigned)k],
                                  &a, &ti);
}

/* ---- heads -------------------------------------------------------------------- */

/* Logits [M, V] of head h on the flow rows `rows` (M of them): an MLP exit's
 * body runs on those rows alone, a BLOCK exit's layer ran on every row. */
static starpu_data_handle_t head_logits(struct call *c, const struct eellm_head *h,
                                        const int32_t *rows, size_t M,
                                        const struct eellm_task_info *ti) {
  int block = h->structure == EELLM__EXIT__STRUCTURE__BLOCK;
  starpu_data_handle_t src = block ? c->f.block : eellm_body_input(h, c->f.x, c->f.r);
  starpu_data_handle_t y = temp(c, M, c->m->spec->d_model);
  eellm_insert_gather_rows(src, input(c, rows, M, sizeof *rows), y, ti);
  struct eellm_pass p = pass_of(c, M);
  struct eellm_layer_acts body;
  if (!block) y = eellm_body_forward(&p, h, y, NULL, &body, ti);
  struct eellm_head_acts a;
  return eellm_head_forward(&p, h, y, &a, ti);
}

/* Head `exit` on the newest row of each undecided sequence, and the task that
 * turns its logits into choices. */
static void submit_head(struct call *c, unsigned exit) {
  c->head = eellm_head_of(c->m, exit);
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
  c->choices = eellm_pool_vector(c->pool, M, sizeof(struct eellm_token_choice));
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
  if (out->raw_logprobs) out->raw_logprobs[out->n] = choice->raw_logprob;
  if (out->max_probs) out->max_probs[out->n] = choice->raw_maxprob;
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
  for (size_t i = 0; i < before; i++)
    if (choices[i].token < 0 && !c->bad_layer) c->bad_layer = c->head.layer;
  if (c->bad_layer) { /* non-finite logits: the call stops, every sequence as it is */
    for (size_t s = 0; s < c->n_seqs; s++) c->seqs[s].done = 1;
    before = 0;
  }
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

/* One draw per unfinished sequence and step: a sequence's stream depends on
 * its own steps alone, whatever else is in the batch. */
static void draw_uniforms(struct call *c) {
  for (size_t s = 0; s < c->n_seqs; s++) {
    if (c->seqs[s].done) continue;
    c->seqs[s].uniform = (float)(eellm_splitmix64_next(&c->seqs[s].rng) >> 40) * 0x1p-24f;
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
  c->pool = c->g->pools[c->g->steps++ % 2];
  eellm_pool_reset(c->pool);
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
                        eellm_param(c->m, c->m->wte), eellm_param(c->m, c->m->wpe), f->x, &ti);
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
    submit_layer(c, c->layer, c->prio_decide - 1 - (int)c->place.layer_stage[c->layer]);
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
    if (c->one_step) return 0;
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

void gen_call_init(struct call *c) {
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->finished_cv, NULL);
}

void gen_call_end(struct call *c) {
  free_kept(c);
  free(c->kept);
  c->kept = NULL;
  c->cap_kept = 0;
  pthread_cond_destroy(&c->finished_cv);
  pthread_mutex_destroy(&c->lock);
}

/* Runs the chain until it stops (every sequence finished, or the step's end
 * with one_step). */
static void run_chain(struct call *c) {
  c->finished = 0;
  c->arrivals = 0;
  if (!submit_until_decision(c)) {
    finish(c);
  } else {
    await_choices(c);
    if (second_to_arrive(c)) go_on(c);
  }
  pthread_mutex_lock(&c->lock);
  while (!c->finished) pthread_cond_wait(&c->finished_cv, &c->lock);
  pthread_mutex_unlock(&c->lock);
}

void gen_run(struct call *c) {
  gen_call_init(c);
  run_chain(c);
  starpu_task_wait_for_all();
  gen_call_end(c);
}

void gen_run_step(struct call *c) {
  c->one_step = 1;
  run_chain(c);
}
