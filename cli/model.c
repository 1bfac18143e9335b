/* eellm model: validate a model spec, describe its parameters, FLOPs, exits and
 * pipeline stages, and convert it between text and binary protobuf. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include <eellm.h>

static const char model_usage[] =
    "usage: eellm model FILE [--pp N | --train TRAIN.txtpb] [--encode OUT.pb] [--decode OUT.txtpb]\n"
    "\n"
    "Reads a model spec in protobuf text format (.txtpb) or binary (.pb), validates it\n"
    "and prints parameters per component and per pipeline stage, FLOPs per token\n"
    "(forward and backward, with and without exits) and the exits.\n"
    "\n"
    "  --pp N             describe a split into N pipeline stages (default 1)\n"
    "  --train FILE       take pp and the stage split from a training spec\n"
    "  --encode OUT.pb    also write the spec in binary protobuf\n"
    "  --decode OUT.txtpb also write the spec in protobuf text format\n"
    "\n"
    "Exit status: 0 valid, 2 invalid spec or bad usage (one line on stderr).\n";

/* "4.74M" style, for counts and FLOPs. */
static const char *human(double x, char *buf, size_t n) {
  const char *units[] = {"", "K", "M", "G", "T", "P"};
  int u = 0;
  while (x >= 1000 && u < 5) x /= 1000, u++;
  snprintf(buf, n, u ? "%.2f%s" : "%.0f%s", x, units[u]);
  return buf;
}

static const char *structure_name(Eellm__Exit__Structure s) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
      &eellm__exit__structure__descriptor, s);
  return v ? v->name : "?";
}

static void print_summary(const Eellm__Model *m, const char *path) {
  printf("model %s%s%s%s\n", path, m->name && *m->name ? " (" : "", m->name ? m->name : "",
         m->name && *m->name ? ")" : "");
  printf("  vocab %u, context %u, d_model %u, %u heads of %u, %u layers, ffn %u\n", m->vocab_size,
         m->context_length, m->d_model, m->n_heads, m->d_model / m->n_heads, m->n_layers,
         eellm_model_spec_ffn_size(m));
  printf("  %s, %s, %s positions, %s, %s embeddings\n",
         m->norm == EELLM__MODEL__NORM__RMSNORM ? "rmsnorm" : "layernorm",
         m->activation == EELLM__MODEL__ACTIVATION__SWIGLU ? "swiglu" : "gelu",
         m->positions == EELLM__MODEL__POSITIONS__ROPE ? "rope" : "learned",
         m->bias ? "biases" : "no biases", m->tie_embeddings ? "tied" : "untied");
}

static void print_params(const Eellm__Model *m, const struct eellm_model_spec_costs *c) {
  char b1[32];
  printf("\nparameters\n");
  printf("  %-34s %14.0f %10s\n", "embedding (wte + wpe)", c->params_embedding,
         human(c->params_embedding, b1, sizeof b1));
  printf("  %-34s %14.0f %10s\n", "each layer", eellm_model_spec_layer_params(m),
         human(eellm_model_spec_layer_params(m), b1, sizeof b1));
  char label[64];
  int shared = 0;
  snprintf(label, sizeof label, "layers (%u)", m->n_layers);
  printf("  %-34s %14.0f %10s\n", label, c->params_layers, human(c->params_layers, b1, sizeof b1));
  printf("  %-34s %14.0f %10s\n", m->tie_embeddings ? "final head (ln_f; tied to wte)" : "final head (ln_f + lm_head)",
         c->params_final_head, human(c->params_final_head, b1, sizeof b1));
  for (unsigned k = 0; k < m->n_exits; k++) {
    snprintf(label, sizeof label, "exit %u (layer %u, %s%s%s)", k, m->exits[k]->layer,
             structure_name(m->exits[k]->structure),
             m->exits[k]->mlp_input == EELLM__EXIT__MLP_INPUT__LAYER_NORM_OUTPUT ? "*" : "",
             m->exits[k]->tied ? ", tied" : "");
    double p = eellm_model_spec_exit_params(m, k);
    printf("  %-34s %14.0f %10s\n", label, p, human(p, b1, sizeof b1));
    shared |= m->exits[k]->mlp_input == EELLM__EXIT__MLP_INPUT__LAYER_NORM_OUTPUT;
  }
  printf("  %-34s %14.0f %10s\n", "total", c->params_total, human(c->params_total, b1, sizeof b1));
  if (shared) printf("  MLP*: reads its layer's ln_2 output, no ln_2 of its own\n");
}

static void print_flops(const Eellm__Model *m, const struct eellm_model_spec_costs *c) {
  char f[32], b[32], t[32];
  printf("\nFLOPs per token (sequence %u, causal attention; backward = 2 x forward)\n",
         m->context_length);
  printf("  %-20s %12s %12s %12s\n", "", "forward", "backward", "fwd+bwd");
  double rows[3] = {c->flops_fwd_backbone, c->flops_fwd_exits,
                    c->flops_fwd_backbone + c->flops_fwd_exits};
  const char *names[3] = {"without exits", "exits alone", "with exits"};
  for (int i = 0; i < 3; i++)
    printf("  %-20s %12s %12s %12s\n", names[i], human(rows[i], f, sizeof f),
           human(2 * rows[i], b, sizeof b), human(3 * rows[i], t, sizeof t));
  if (c->flops_fwd_backbone > 0)
    printf("  exits add %.1f%% to a training step\n",
           100.0 * c->flops_fwd_exits / c->flops_fwd_backbone);
}

static void print_exits(const Eellm__Model *m) {
  printf("\nexits (the final head reads layer %u, weight 1)\n", m->n_layers);
  if (m->n_exits == 0) {
    printf("  none\n");
    return;
  }
  printf("  %-3s %-6s %-9s %-9s %-7s %-7s %-11s %s\n", "#", "layer", "placement", "structure",
         "head", "weight", "temperature", "schedule");
  int notes = 0;
  for (unsigned k = 0; k < m->n_exits; k++) {
    const Eellm__Exit *e = m->exits[k];
    char schedule[64] = "constant";
    if (e->schedule && e->schedule->warmup_steps > 0)
      snprintf(schedule, sizeof schedule, "%g -> %g over %u steps, %s", e->schedule->init,
               e->loss_weight, e->schedule->warmup_steps,
               e->schedule->shape == EELLM__WEIGHT_SCHEDULE__SHAPE__COSINE ? "cosine" : "linear");
    printf("  %-3u %-6u %-9s %-9s %-7s %-7g %-11g %s\n", k, e->layer,
           e->placement == EELLM__EXIT__PLACEMENT__PRE ? "pre" : "post",
           structure_name(e->structure), e->tied ? "tied" : "own", e->loss_weight, e->temperature,
           schedule);
    notes |= e->mlp_input == EELLM__EXIT__MLP_INPUT__LAYER_NORM_OUTPUT || e->dynamic_weight;
  }
  if (!notes) return;
  for (unsigned k = 0; k < m->n_exits; k++) {
    const Eellm__Exit *e = m->exits[k];
    if (e->mlp_input == EELLM__EXIT__MLP_INPUT__LAYER_NORM_OUTPUT)
      printf("  exit %u: its MLP reads layer %u's own ln_2 output (EE-LLM's exit MLP)\n", k,
             e->layer);
    if (e->dynamic_weight)
      printf("  exit %u: dynamic loss weight, each token's loss times the exit's confidence\n", k);
  }
}

static int print_stages(const Eellm__Model *m, unsigned pp, const Eellm__Parallelism *par) {
  unsigned n = m->n_layers;
  unsigned *split = calloc(pp, sizeof *split);
  unsigned *layer_stage = calloc(n, sizeof *layer_stage);
  /* Exits by stage, in spec order within each: first[s] .. first[s + 1] of by_stage. */
  unsigned *first_exit = calloc((size_t)pp + 1, sizeof *first_exit);
  unsigned *by_stage = calloc(m->n_exits + 1, sizeof *by_stage);
  unsigned *exit_stage = calloc(m->n_exits + 1, sizeof *exit_stage);
  int ok = split && layer_stage && first_exit && by_stage && exit_stage &&
           eellm_model_spec_stage_split(m, pp, par ? par->stage_layers : NULL,
                                        par ? par->n_stage_layers : 0, split) == 0;
  if (ok) {
    for (unsigned s = 0, i = 0; s < pp; s++)
      for (unsigned j = 0; j < split[s]; j++) layer_stage[i++] = s;
    for (unsigned k = 0; k < m->n_exits; k++) {
      const Eellm__Exit *e = m->exits[k];
      unsigned owner = e->placement == EELLM__EXIT__PLACEMENT__PRE ? e->layer + 1 : e->layer;
      exit_stage[k] = owner >= 1 && owner <= n ? layer_stage[owner - 1] : pp;
      if (exit_stage[k] < pp) first_exit[exit_stage[k] + 1]++;
    }
    for (unsigned s = 0; s < pp; s++) first_exit[s + 1] += first_exit[s];
    unsigned *fill = layer_stage; /* reused: next free slot of each stage */
    for (unsigned s = 0; s < pp; s++) fill[s] = first_exit[s];
    for (unsigned k = 0; k < m->n_exits; k++)
      if (exit_stage[k] < pp) by_stage[fill[exit_stage[k]]++] = k;
  }
  if (!ok) {
    free(split);
    free(layer_stage);
    free(first_exit);
    free(by_stage);
    free(exit_stage);
    return -1;
  }
  char p[32], f[32];
  printf("\npipeline stages (pp = %u%s)\n", pp,
         par && par->n_stage_layers ? ", split from the training spec" : ", balanced by FLOPs");
  printf("  %-6s %-9s %-10s %12s %14s\n", "stage", "layers", "exits", "parameters", "fwd FLOPs/tok");
  struct eellm_model_spec_costs c;
  eellm_model_spec_costs(m, &c);
  unsigned first = 0;
  for (unsigned s = 0; s < pp; s++) {
    unsigned last = first + split[s]; /* layers first+1 .. last, 1-based */
    double params = split[s] * eellm_model_spec_layer_params(m);
    double flops = split[s] * eellm_model_spec_layer_flops(m, m->context_length);
    char exits[64] = "";
    for (unsigned x = first_exit[s]; x < first_exit[s + 1]; x++) {
      unsigned k = by_stage[x];
      params += eellm_model_spec_exit_params(m, k);
      flops += eellm_model_spec_exit_flops(m, k, m->context_length);
      size_t used = strlen(exits);
      snprintf(exits + used, sizeof exits - used, "%s%u", used ? "," : "", k);
    }
    if (s == 0) params += c.params_embedding;
    if (s == pp - 1) {
      params += c.params_final_head;
      flops += 2.0 * m->d_model * m->vocab_size;
    }
    char layers[32];
    snprintf(layers, sizeof layers, "%u-%u", first + 1, last);
    printf("  %-6u %-9s %-10s %12s %14s\n", s, layers, exits[0] ? exits : "-",
           human(params, p, sizeof p), human(flops, f, sizeof f));
    first = last;
  }
  free(split);
  free(layer_stage);
  free(first_exit);
  free(by_stage);
  free(exit_stage);
  return 0;
}

int cmd_model(int argc, char **argv) {
  static const struct option options[] = {{"pp", required_argument, 0, 'p'},
                                          {"train", required_argument, 0, 't'},
                                          {"encode", required_argument, 0, 'e'},
                                          {"decode", required_argument, 0, 'd'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  const char *train_path = NULL, *encode_path = NULL, *decode_path = NULL;
  long pp = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    char *end;
    switch (opt) {
      case 'p':
        pp = strtol(optarg, &end, 10);
        if (*end || pp < 1) {
          fprintf(stderr, "eellm model: --pp wants a positive integer, got '%s'\n", optarg);
          return 2;
        }
        break;
      case 't': train_path = optarg; break;
      case 'e': encode_path = optarg; break;
      case 'd': decode_path = optarg; break;
      case 'h': fputs(model_usage, stdout); return 0;
      default: fputs(model_usage, stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fputs(model_usage, stderr);
    return 2;
  }
  const char *path = argv[optind];
  char err[512];
  Eellm__Model *m = eellm_model_spec_load(path, err, sizeof err);
  if (!m) {
    fprintf(stderr, "eellm model: %s\n", err);
    return 2;
  }
  Eellm__Train *train = NULL;
  if (train_path) {
    train = eellm_train_spec_load(train_path, m, err, sizeof err);
    if (!train) {
      fprintf(stderr, "eellm model: %s\n", err);
      eellm_model_spec_free(m);
      return 2;
    }
  }
  const Eellm__Parallelism *par = train ? train->parallelism : NULL;
  if (!pp) pp = par ? par->pp : 1;
  int status = 0;
  if (pp > (long)m->n_layers) {
    fprintf(stderr, "eellm model: --pp %ld is larger than the %u layers of %s\n", pp, m->n_layers,
            path);
    status = 2;
  } else if (pp > (long)EELLM_MAX_STAGES) {
    fprintf(stderr, "eellm model: --pp %ld is more than the %u pipeline stages eellm runs\n", pp,
            EELLM_MAX_STAGES);
    status = 2;
  } else {
    struct eellm_model_spec_costs c;
    eellm_model_spec_costs(m, &c);
    print_summary(m, path);
    print_params(m, &c);
    print_flops(m, &c);
    print_exits(m);
    if (print_stages(m, (unsigned)pp, par && par->pp == pp ? par : NULL) != 0) {
      snprintf(err, sizeof err, "out of memory splitting %u layers into %ld stages", m->n_layers,
               pp);
      status = 1;
    }
  }
  if (status == 0 && encode_path &&
      eellm_spec_write_binary(encode_path, &m->base, err, sizeof err) != 0)
    status = 1;
  if (status == 0 && decode_path &&
      eellm_spec_write_text(decode_path, &m->base, err, sizeof err) != 0)
    status = 1;
  if (status == 1) fprintf(stderr, "eellm model: %s\n", err);
  eellm_train_spec_free(train);
  eellm_model_spec_free(m);
  return status;
}
