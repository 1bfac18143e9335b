/* Parameter and FLOP accounting, and the split of layers into pipeline stages. */
#include <float.h>
#include <stdlib.h>

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
    case EELLM__EXIT__STRUCTURE__MLP: return mlp_params(m) + norm_params(m) + head;
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

/* Forward FLOPs charged to layer i (0-based): the layer, the exits its stage
 * holds, and the final head on the last layer. */
static double stage_unit_cost(const Eellm__Model *m, unsigned i) {
  double cost = eellm_model_spec_layer_flops(m, m->context_length);
  for (unsigned k = 0; k < m->n_exits; k++) {
    if (eellm_exit_home_layer(m->exits[k]) == i)
      cost += eellm_model_spec_exit_flops(m, k, m->context_length);
  }
  if (i == m->n_layers - 1) cost += head_flops(m);
  return cost;
}

void eellm_model_spec_stage_split(const Eellm__Model *m, unsigned pp, const uint32_t *given,
                                  size_t n_given, unsigned *stage_layers) {
  unsigned n = m->n_layers;
  if (n_given > 0) {
    for (unsigned s = 0; s < pp; s++) stage_layers[s] = given[s];
    return;
  }
  /* Contiguous partition minimising the most expensive stage: best[s][i] is
   * the best bottleneck for the first i layers in s + 1 stages. */
  double *prefix = calloc(n + 1, sizeof *prefix);
  double *best = malloc(sizeof *best * pp * (n + 1));
  unsigned *cut = malloc(sizeof *cut * pp * (n + 1));
  if (!prefix || !best || !cut) abort();
  for (unsigned i = 0; i < n; i++) prefix[i + 1] = prefix[i] + stage_unit_cost(m, i);
  for (unsigned i = 0; i <= n; i++) best[i] = i ? prefix[i] : DBL_MAX;
  for (unsigned s = 1; s < pp; s++)
    for (unsigned i = 0; i <= n; i++) {
      double b = DBL_MAX;
      unsigned c = 0;
      for (unsigned j = s; j < i; j++) {
        double prev = best[(s - 1) * (n + 1) + j];
        double here = prefix[i] - prefix[j];
        double bottleneck = prev > here ? prev : here;
        if (bottleneck < b) b = bottleneck, c = j;
      }
      best[s * (n + 1) + i] = b;
      cut[s * (n + 1) + i] = c;
    }
  unsigned end = n;
  for (unsigned s = pp - 1; s > 0; s--) {
    unsigned start = cut[s * (n + 1) + end];
    stage_layers[s] = end - start;
    end = start;
  }
  stage_layers[0] = end;
  free(prefix);
  free(best);
  free(cut);
}
