/* Parameter and FLOP accounting, and the split of layers into pipeline stages. */
#include <stdlib.h>
#include <string.h>

#include "eellm.h"
#include "graph/model.h"
#include "graph/placement.h"

unsigned eellm_fc_out(const Eellm__Model *m) {
  unsigned f = eellm_model_spec_ffn_size(m);
  return m->activation == EELLM__MODEL__ACTIVATION__SWIGLU ? 2 * f : f;
}

static double norm_params(const Eellm__Model *m) {
  int has_bias = m->norm == EELLM__MODEL__NORM__LAYERNORM && m->bias;
  return m->d_model * (has_bias ? 2.0 : 1.0);
}

static double linear_params(const Eellm__Model *m, double in, double out) {
  return in * out + (m->bias ? out : 0);
}

static double mlp_params(const Eellm__Model *m) {
  double d = m->d_model;
  return norm_params(m) + linear_params(m, d, eellm_fc_out(m)) +
         linear_params(m, eellm_model_spec_ffn_size(m), d);
}

double eellm_model_spec_layer_params(const Eellm__Model *m) {
  double d = m->d_model;
  return norm_params(m) + linear_params(m, d, 3 * d) + linear_params(m, d, d) + mlp_params(m);
}

double eellm_model_spec_exit_params(const Eellm__Model *m, unsigned k) {
  const Eellm__Exit *e = m->exits[k];
  double head = e->tied ? 0 : (double)m->vocab_size * m->d_model;
  switch (e->structure) {
    case EELLM__EXIT__STRUCTURE__PLAIN: return head;
    case EELLM__EXIT__STRUCTURE__MLP: {
      /* LAYER_NORM_OUTPUT: the branch reads the layer's ln_2, no norm of its own before it. */
      double shared = e->mlp_input == EELLM__EXIT__MLP_INPUT__LAYER_NORM_OUTPUT ? norm_params(m) : 0;
      return mlp_params(m) - shared + norm_params(m) + head;
    }
    case EELLM__EXIT__STRUCTURE__BLOCK:
      return eellm_model_spec_layer_params(m) + norm_params(m) + head;
    default: return norm_params(m) + head;
  }
}

static double mlp_flops(const Eellm__Model *m) {
  return 2.0 * m->d_model * eellm_fc_out(m) + 2.0 * eellm_model_spec_ffn_size(m) * m->d_model;
}

double eellm_model_spec_layer_flops(const Eellm__Model *m, unsigned seq_len) {
  double d = m->d_model;
  /* Causal attention: query t meets t + 1 keys, (T + 1) / 2 on average, for scores and values. */
  double attention = 2.0 * d * (seq_len + 1.0);
  return 2.0 * d * 3 * d + 2.0 * d * d + mlp_flops(m) + attention;
}

static double head_flops(const Eellm__Model *m) { return 2.0 * m->d_model * m->vocab_size; }

double eellm_model_spec_exit_flops(const Eellm__Model *m, unsigned k, unsigned seq_len) {
  switch (m->exits[k]->structure) {
    case EELLM__EXIT__STRUCTURE__MLP: return mlp_flops(m) + head_flops(m);
    case EELLM__EXIT__STRUCTURE__BLOCK:
      return eellm_model_spec_layer_flops(m, seq_len) + head_flops(m);
    default: return head_flops(m);
  }
}

void eellm_model_spec_costs(const Eellm__Model *m, struct eellm_model_spec_costs *out) {
  double d = m->d_model;
  int learned = m->positions == EELLM__MODEL__POSITIONS__LEARNED;
  out->params_embedding = (double)m->vocab_size * d + (learned ? (double)m->context_length * d : 0);
  out->params_layers = m->n_layers * eellm_model_spec_layer_params(m);
  out->params_final_head = norm_params(m) + (m->tie_embeddings ? 0 : (double)m->vocab_size * d);
  out->params_exits = 0;
  out->flops_fwd_exits = 0;
  for (unsigned k = 0; k < m->n_exits; k++) {
    out->params_exits += eellm_model_spec_exit_params(m, k);
    out->flops_fwd_exits += eellm_model_spec_exit_flops(m, k, m->context_length);
  }
  out->params_total =
      out->params_embedding + out->params_layers + out->params_final_head + out->params_exits;
  out->flops_fwd_backbone =
      m->n_layers * eellm_model_spec_layer_flops(m, m->context_length) + head_flops(m);
}

/* prefix[i] = forward FLOPs of layers 0..i-1 (0-based), each layer charged
 * with itself, the exits its stage holds (in spec order) and, the last one,
 * the final head. */
static void stage_prefix(const Eellm__Model *m, double *prefix) {
  unsigned n = m->n_layers;
  double *cost = prefix + 1;
  double layer = eellm_model_spec_layer_flops(m, m->context_length);
  for (unsigned i = 0; i < n; i++) cost[i] = layer;
  for (unsigned k = 0; k < m->n_exits; k++) {
    unsigned home = eellm_exit_home_layer(m->exits[k]);
    if (home < n) cost[home] += eellm_model_spec_exit_flops(m, k, m->context_length);
  }
  cost[n - 1] += head_flops(m);
  prefix[0] = 0;
  for (unsigned i = 0; i < n; i++) prefix[i + 1] = prefix[i] + cost[i];
}

/* Non-negative doubles order as their bit patterns. */
static uint64_t bits_of(double x) {
  uint64_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}

static double double_of(uint64_t b) {
  double x;
  memcpy(&x, &b, sizeof x);
  return x;
}

/* The cost of layers j..i-1, as the split compares it. Nondecreasing in i and
 * nonincreasing in j, rounding included (prefix is nondecreasing). */
static double span(const double *prefix, unsigned j, unsigned i) { return prefix[i] - prefix[j]; }

/* Whether layers 0..e-1 split into at most `parts` runs (so into exactly
 * `parts`, e >= parts) that each cost at most x: greedily, every run as long
 * as x allows, its end found by bisection. O(parts log e). */
static int fits(const double *prefix, unsigned e, unsigned parts, double x) {
  unsigned j = 0, used = 0;
  while (j < e) {
    if (++used > parts || span(prefix, j, j + 1) > x) return 0;
    unsigned lo = j + 1, hi = e; /* span(j, lo) <= x */
    while (lo < hi) {
      unsigned mid = lo + (hi - lo + 1) / 2;
      if (span(prefix, j, mid) <= x) lo = mid;
      else hi = mid - 1;
    }
    j = lo;
  }
  return 1;
}

/* The least bottleneck of layers 0..e-1 in `parts` runs, known to be at most
 * hi (fits there): bisection over the bit patterns of doubles, at most 64 tries. */
static double least_bottleneck(const double *prefix, unsigned e, unsigned parts, double hi) {
  uint64_t lo_b = 0, hi_b = bits_of(hi);
  while (lo_b < hi_b) {
    uint64_t mid = lo_b + (hi_b - lo_b) / 2;
    if (fits(prefix, e, parts, double_of(mid))) hi_b = mid;
    else lo_b = mid + 1;
  }
  return double_of(hi_b);
}

/* The split used to be a dynamic programme over (stages, layers), O(pp n^2)
 * time and O(pp n) memory: best[s][i], the least bottleneck of the first i
 * layers in s + 1 stages, minimised max(best[s-1][j], span(j, i)) over j,
 * keeping the smallest j among equals; the split was read back from the last
 * stage. This computes the same split: span(j, e) falls and best[s-1][j] rises
 * with j (rounding included), so the smallest minimising j is the smallest j
 * with span(j, e) <= best[s][e] (the last stage as long as the bottleneck
 * allows), but not below s. best[s][e] itself comes from bisection with a
 * greedy test; going down the stages it can only fall, and one test says
 * whether it did. tests/test_placement.c compares the two on random specs. */
int eellm_model_spec_stage_split(const Eellm__Model *m, unsigned pp, const uint32_t *given,
                                 size_t n_given, unsigned *stage_layers) {
  unsigned n = m->n_layers;
  if (pp < 1 || pp > n || pp > EELLM_MAX_STAGES || n > EELLM_MAX_LAYERS) return -1;
  if (n_given > 0) {
    for (unsigned s = 0; s < pp; s++) stage_layers[s] = given[s];
    return 0;
  }
  double *prefix = malloc(sizeof *prefix * ((size_t)n + 1));
  if (!prefix) return -1;
  stage_prefix(m, prefix);
  unsigned end = n;
  double bottleneck = pp > 1 ? least_bottleneck(prefix, n, pp, prefix[n]) : prefix[n];
  for (unsigned s = pp - 1; s > 0; s--) {
    /* bottleneck = best[s][end]: the smallest start with span(start, end) <= it. */
    unsigned lo = 0, hi = end - 1; /* span(end - 1, end) <= bottleneck */
    while (lo < hi) {
      unsigned mid = lo + (hi - lo) / 2;
      if (span(prefix, mid, end) <= bottleneck) hi = mid;
      else lo = mid + 1;
    }
    unsigned start = lo > s ? lo : s;
    stage_layers[s] = end - start;
    end = start;
    if (s > 1 && bottleneck > 0) {
      double below = double_of(bits_of(bottleneck) - 1);
      if (fits(prefix, end, s, below)) bottleneck = least_bottleneck(prefix, end, s, below);
    }
  }
  stage_layers[0] = end;
  free(prefix);
  return 0;
}
