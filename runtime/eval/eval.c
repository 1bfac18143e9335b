/* eval.h: one forward pass over validation tokens reduced to per-token
 * figures per exit, sweeps over thresholds on those figures, and CALM-style
 * calibration of one threshold. Host code over the public model API. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm.h"
#include "eellm/eval.h"
#include "codelets/cpu/kernels.h"
#include "graph/model.h"
#include "runtime/engine/mpi.h"

struct eellm_eval {
  size_t n;              /* scored tokens */
  unsigned E;            /* exits, final head last, in layer order */
  unsigned *layer, *index;
  float *temperature;
  double *flops, full;
  float *conf[2];        /* [rule][n * E] */
  float *logp;           /* [n * E] */
  uint8_t *agree;        /* [n * E] */
};

/* ---- the forward pass ------------------------------------------------------- */

/* Sorts index[0..n-1] by layer[index[.]] (insertion sort: one exit per layer). */
static void sort_by_layer(unsigned *index, unsigned n, const unsigned *layer) {
  for (unsigned a = 1; a < n; a++)
    for (unsigned b = a; b > 0 && layer[index[b - 1]] > layer[index[b]]; b--) {
      unsigned t = index[b];
      index[b] = index[b - 1];
      index[b - 1] = t;
    }
}

static struct eellm_eval *new_eval(eellm_model *m, size_t n) {
  struct eellm_eval *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  const Eellm__Model *spec = eellm_model_spec(m);
  e->n = n;
  e->E = eellm_model_n_exits(m);
  e->layer = calloc(e->E, sizeof *e->layer);
  e->index = calloc(e->E, sizeof *e->index);
  e->temperature = calloc(e->E, sizeof *e->temperature);
  e->flops = calloc(e->E, sizeof *e->flops);
  unsigned *all_layers = calloc(e->E, sizeof *all_layers);
  size_t cells = n * e->E;
  e->conf[0] = malloc(cells * sizeof(float));
  e->conf[1] = malloc(cells * sizeof(float));
  e->logp = malloc(cells * sizeof(float));
  e->agree = malloc(cells);
  if (!e->layer || !e->index || !e->temperature || !e->flops || !all_layers || !e->conf[0] ||
      !e->conf[1] || !e->logp || !e->agree) {
    free(all_layers);
    eellm_eval_free(e);
    return NULL;
  }
  for (unsigned k = 0; k < e->E; k++) {
    all_layers[k] = eellm_model_exit_layer(m, k);
    e->index[k] = k;
  }
  /* The final head after every exit, even one on the last layer. */
  all_layers[e->E - 1] = spec->n_layers + 1;
  sort_by_layer(e->index, e->E, all_layers);
  unsigned T = eellm_model_seq_len(m);
  double layer = eellm_model_spec_layer_flops(spec, T), exits = 0;
  struct eellm_model_spec_costs costs;
  eellm_model_spec_costs(spec, &costs);
  double head = costs.flops_fwd_backbone -
                spec->n_layers * eellm_model_spec_layer_flops(spec, spec->context_length);
  for (unsigned j = 0; j < e->E; j++) {
    unsigned k = e->index[j];
    int final = j == e->E - 1;
    e->layer[j] = final ? spec->n_layers : all_layers[k];
    e->temperature[j] = final ? 1.0f : spec->exits[k]->temperature;
    if (!final) exits += eellm_model_spec_exit_flops(spec, k, T);
    e->flops[j] = e->layer[j] * layer + exits + (final ? head : 0);
  }
  e->full = spec->n_layers * layer + head;
  free(all_layers);
  return e;
}

/* One row's figures at exit j from its logits z [V], as generation's sampling
 * kernel computes them (eellm_cpu_softmax_stats). Returns the argmax, or -1
 * for non-finite logits. */
static long reduce_row(struct eellm_eval *e, size_t i, unsigned j, const float *z, size_t V,
                       int32_t target) {
  for (size_t v = 0; v < V; v++)
    if (!isfinite(z[v])) return -1;
  double inv_t = 1.0 / e->temperature[j];
  struct eellm_softmax_stats st = eellm_cpu_softmax_stats(z, V, inv_t);
  size_t cell = i * e->E + j;
  e->conf[EELLM_EXIT_MAXPROB][cell] = (float)st.maxprob;
  e->conf[EELLM_EXIT_ENTROPY][cell] = (float)st.entropy_conf;
  e->logp[cell] = (float)(((double)z[target] - z[st.argmax]) * inv_t - st.log_sum);
  return (long)st.argmax;
}

/* The scored rows of a micro-batch: rows[r] is the token index of row r, or
 * -1 for a masked row. Final head first, for the agreement of the others. */
static int reduce_batch(struct eellm_eval *e, float *const *logits, const int32_t *targets,
                        const long *rows, size_t n_rows, size_t V, char *err, size_t errlen) {
  for (size_t r = 0; r < n_rows; r++) {
    if (rows[r] < 0) continue;
    size_t i = (size_t)rows[r];
    long top[2];
    for (unsigned step = 0; step < e->E; step++) {
      unsigned j = step == 0 ? e->E - 1 : step - 1;
      long best = reduce_row(e, i, j, logits[j] + r * V, V, targets[r]);
      if (best < 0) {
        snprintf(err, errlen, "the head at layer %u gave non-finite logits for token %zu",
                 e->layer[j], i);
        return -1;
      }
      if (step == 0) top[0] = best;
      top[1] = best;
      e->agree[i * e->E + j] = top[1] == top[0];
    }
  }
  return 0;
}

/* Micro-batch b's windows: tokens, targets, mask, and each row's token index. */
static void fill_batch(const uint16_t *tokens, size_t n, size_t b, unsigned B, unsigned T,
                       int32_t *tok, int32_t *tgt, float *mask, long *rows) {
  for (unsigned s = 0; s < B; s++)
    for (unsigned t = 0; t < T; t++) {
      size_t r = (size_t)s * T + t, pos = ((size_t)b * B + s) * T + t;
      int ok = pos + 1 < n;
      tok[r] = ok ? tokens[pos] : 0;
      tgt[r] = ok ? tokens[pos + 1] : 0;
      mask[r] = ok ? 1.0f : 0.0f;
      rows[r] = ok ? (long)pos : -1;
    }
}

struct eellm_eval *eellm_eval_run(eellm_model *m, const uint16_t *tokens, size_t n, char *err,
                                  size_t errlen) {
  if (eellm_mpi_active()) {
    snprintf(err, errlen, "evaluation runs in one process, not under MPI");
    return NULL;
  }
  if (n < 2) {
    snprintf(err, errlen, "%zu tokens: evaluation needs at least 2", n);
    return NULL;
  }
  const Eellm__Model *spec = eellm_model_spec(m);
  size_t V = spec->vocab_size;
  for (size_t i = 0; i < n; i++)
    if (tokens[i] >= V) {
      snprintf(err, errlen, "token %zu: id %u outside the model's vocabulary (%zu)", i,
               (unsigned)tokens[i], V);
      return NULL;
    }
  struct eellm_eval *e = new_eval(m, n - 1);
  unsigned B = eellm_model_micro_batch(m), T = eellm_model_seq_len(m);
  size_t rows = (size_t)B * T, windows = (n - 1 + T - 1) / T, batches = (windows + B - 1) / B;
  int32_t *tok[2], *tgt[2];
  float *mask[2];
  long *row_of[2];
  float **logits = calloc(e ? e->E : 1, sizeof *logits);
  int ok = e && logits;
  for (int h = 0; h < 2; h++) {
    tok[h] = malloc(rows * sizeof(int32_t));
    tgt[h] = malloc(rows * sizeof(int32_t));
    mask[h] = malloc(rows * sizeof(float));
    row_of[h] = malloc(rows * sizeof(long));
    ok = ok && tok[h] && tgt[h] && mask[h] && row_of[h];
  }
  for (unsigned j = 0; ok && j < e->E; j++) ok = (logits[j] = malloc(rows * V * sizeof(float))) != NULL;
  if (!ok) snprintf(err, errlen, "out of memory for the evaluation of %zu tokens", n);
  /* Batch b runs while batch b - 1's logits (copied out) are reduced. */
  for (size_t b = 0; ok && b <= batches; b++) {
    int cur = b % 2, prev = !cur;
    if (b > 0)
      for (unsigned j = 0; j < e->E; j++)
        if (eellm_model_exit_logits(m, e->index[j], logits[j]) != 0) {
          snprintf(err, errlen, "no logits for the exit at layer %u", e->layer[j]);
          ok = 0;
          break;
        }
    if (ok && b < batches) {
      fill_batch(tokens, n, b, B, T, tok[cur], tgt[cur], mask[cur], row_of[cur]);
      struct eellm_batch batch = {tok[cur], tgt[cur], mask[cur]};
      if (eellm_model_submit_forward(m, &batch, err, errlen) != 0) ok = 0;
    }
    if (ok && b > 0 &&
        reduce_batch(e, logits, tgt[prev], row_of[prev], rows, V, err, errlen) != 0)
      ok = 0;
    eellm_model_wait(m);
  }
  for (int h = 0; h < 2; h++) free(tok[h]), free(tgt[h]), free(mask[h]), free(row_of[h]);
  for (unsigned j = 0; logits && e && j < e->E; j++) free(logits[j]);
  free(logits);
  if (!ok) {
    eellm_eval_free(e);
    return NULL;
  }
  return e;
}

void eellm_eval_free(struct eellm_eval *e) {
  if (!e) return;
  free(e->layer);
  free(e->index);
  free(e->temperature);
  free(e->flops);
  free(e->conf[0]);
  free(e->conf[1]);
  free(e->logp);
  free(e->agree);
  free(e);
}

/* ---- figures ---------------------------------------------------------------- */

size_t eellm_eval_n_tokens(const struct eellm_eval *e) { return e->n; }
unsigned eellm_eval_n_exits(const struct eellm_eval *e) { return e->E; }
unsigned eellm_eval_exit_layer(const struct eellm_eval *e, unsigned j) {
  return j < e->E ? e->layer[j] : 0;
}
unsigned eellm_eval_exit_model_index(const struct eellm_eval *e, unsigned j) {
  return j < e->E ? e->index[j] : 0;
}
double eellm_eval_exit_flops(const struct eellm_eval *e, unsigned j) {
  return j < e->E ? e->flops[j] : 0;
}
double eellm_eval_full_flops(const struct eellm_eval *e) { return e->full; }
float eellm_eval_confidence(const struct eellm_eval *e, enum eellm_exit_rule rule, size_t i,
                            unsigned j) {
  return e->conf[rule == EELLM_EXIT_ENTROPY][i * e->E + j];
}
float eellm_eval_logprob(const struct eellm_eval *e, size_t i, unsigned j) {
  return e->logp[i * e->E + j];
}

static void clamp_range(const struct eellm_eval *e, size_t *first, size_t *count) {
  if (*first > e->n) *first = e->n;
  if (*count > e->n - *first) *count = e->n - *first;
}

double eellm_eval_exit_loss(const struct eellm_eval *e, unsigned j, size_t first, size_t count) {
  clamp_range(e, &first, &count);
  if (j >= e->E || count == 0) return NAN;
  double sum = 0;
  for (size_t i = first; i < first + count; i++) sum -= e->logp[i * e->E + j];
  return sum / (double)count;
}

/* Running sums of a sweep. */
struct sums {
  double nll, final_nll, flops, agree;
  double *count; /* per exit */
};

static void finish_point(const struct eellm_eval *e, const struct sums *s, size_t count,
                         enum eellm_exit_rule rule, float threshold, struct eellm_eval_point *out) {
  double n = count ? (double)count : NAN;
  out->rule = rule;
  out->threshold = threshold;
  for (unsigned j = 0; out->share && j < e->E; j++) out->share[j] = s->count[j] / n;
  out->mean_flops = s->flops / n;
  out->speedup = e->full / out->mean_flops;
  out->loss = s->nll / n;
  out->final_loss = s->final_nll / n;
  out->loss_increase = out->loss / out->final_loss - 1;
  out->agreement = s->agree / n;
}

/* The exit token i takes at threshold t (generation's rule). */
static unsigned exit_of(const struct eellm_eval *e, const float *conf, size_t i, float t) {
  if (!(t < 1)) return e->E - 1;
  for (unsigned j = 0; j + 1 < e->E; j++)
    if (conf[i * e->E + j] >= t) return j;
  return e->E - 1;
}

static void add_token(const struct eellm_eval *e, struct sums *s, size_t i, unsigned j, int sign,
                      int exits_on) {
  size_t cell = i * e->E + j;
  s->nll -= sign * (double)e->logp[cell];
  s->agree += sign * (double)e->agree[cell];
  s->flops += sign * (exits_on || j + 1 < e->E ? e->flops[j] : e->full);
  s->count[j] += sign;
}

void eellm_eval_sweep(const struct eellm_eval *e, enum eellm_exit_rule rule, float threshold,
                      size_t first, size_t count, struct eellm_eval_point *out) {
  clamp_range(e, &first, &count);
  double *per_exit = calloc(e->E, sizeof *per_exit);
  if (!per_exit) abort();
  struct sums s = {.count = per_exit};
  const float *conf = e->conf[rule == EELLM_EXIT_ENTROPY];
  for (size_t i = first; i < first + count; i++) {
    add_token(e, &s, i, exit_of(e, conf, i, threshold), 1, threshold < 1);
    s.final_nll -= e->logp[i * e->E + e->E - 1];
  }
  finish_point(e, &s, count, rule, threshold, out);
  free(per_exit);
}

/* ---- calibration -------------------------------------------------------------- */

/* Where a token moves as the threshold falls to `at`: from exit `from` to `to`. */
struct event {
  float at;
  uint32_t from, to;
  size_t token;
};

static int by_at_desc(const void *a, const void *b) {
  const struct event *x = a, *y = b;
  return (x->at < y->at) - (x->at > y->at);
}

static int meets(const struct eellm_eval *e, const struct sums *s, size_t count,
                 enum eellm_eval_target target, double value) {
  (void)e;
  if (target == EELLM_TARGET_AGREEMENT) return s->agree >= value * (double)count;
  return s->nll <= (1 + value) * s->final_nll;
}

/* As the threshold falls, token i's exit changes only at confidences that are
 * records of its prefix maximum (in layer order): at record r_m of exit j_m it
 * moves to j_m from the next record's exit (or the final head). Sorting these
 * events gives every distinct decision in O(n E log(n E)). */
float eellm_eval_calibrate(const struct eellm_eval *e, enum eellm_exit_rule rule,
                           enum eellm_eval_target target, double value, size_t first,
                           size_t count, struct eellm_eval_point *out) {
  clamp_range(e, &first, &count);
  const float *conf = e->conf[rule == EELLM_EXIT_ENTROPY];
  unsigned X = e->E - 1; /* exits before the final head */
  struct event *ev = malloc((count * X + 1) * sizeof *ev);
  unsigned *rec = malloc((X + 1) * sizeof *rec);
  double *per_exit = calloc(e->E, sizeof *per_exit);
  if (!ev || !rec || !per_exit) abort();
  size_t n_ev = 0;
  struct sums s = {.count = per_exit};
  for (size_t i = first; i < first + count; i++) {
    size_t cell = i * e->E;
    s.final_nll -= e->logp[cell + X];
    /* Exits on: every token starts at the final head, paying for every exit. */
    add_token(e, &s, i, X, 1, 1);
    unsigned n_rec = 0;
    float best = -INFINITY;
    for (unsigned j = 0; j < X; j++)
      if (conf[cell + j] > best) best = conf[cell + j], rec[n_rec++] = j;
    for (unsigned m = 0; m < n_rec; m++)
      ev[n_ev++] = (struct event){conf[cell + rec[m]], m + 1 < n_rec ? rec[m + 1] : X, rec[m], i};
  }
  qsort(ev, n_ev, sizeof *ev, by_at_desc);
  float chosen = 1;
  for (size_t a = 0; a < n_ev;) {
    size_t b = a;
    for (; b < n_ev && ev[b].at == ev[a].at; b++) {
      add_token(e, &s, ev[b].token, ev[b].from, -1, 1);
      add_token(e, &s, ev[b].token, ev[b].to, 1, 1);
    }
    /* Confidences of 1 leave at every threshold below 1: part of the start. */
    if (ev[a].at >= 1) {
      a = b;
      continue;
    }
    if (!(ev[a].at > 0) || !meets(e, &s, count, target, value)) break;
    chosen = ev[a].at;
    a = b;
  }
  if (chosen < 1) {
    /* Up to a multiple of 1e-4, still at or below the next distinct value above. */
    float up = (float)(ceil((double)chosen * 1e4 - 1e-6) / 1e4);
    float next = 1;
    for (size_t a = 0; a < n_ev && ev[a].at > chosen; a++) next = ev[a].at;
    chosen = up >= chosen && up <= next && up < 1 ? up : chosen;
  }
  free(ev);
  free(rec);
  free(per_exit);
  eellm_eval_sweep(e, rule, chosen, first, count, out);
  return chosen;
}
