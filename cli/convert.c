/* eellm convert add-exits: turn a trained model into an early-exit one by
 * adding exits to its checkpoint, initialised from the final head (copy) or
 * at random, as EE-Tuning does. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include <eellm.h>

static const char convert_usage[] =
    "usage: eellm convert add-exits --ckpt IN.safetensors --exits L1,L2,... --out OUT.safetensors\n"
    "                              [--structure plain|norm|mlp|block] [--init copy|random]\n"
    "                              [--weights W1,W2,...] [--tied] [--seed S]\n"
    "\n"
    "Adds exits reading the outputs of layers L1, L2, ... to a checkpoint's model and\n"
    "writes a checkpoint of the larger model (its spec in the metadata). New exits own\n"
    "their output projection unless --tied. With --init copy (default) an exit's norm and\n"
    "projection start as copies of the final norm and head, an MLP exit's MLP as a copy\n"
    "of the last layer's, a block exit's block as a copy of the last layer; --init random\n"
    "draws them as a fresh model would. Loss weights default to 1.\n"
    "Then: eellm train --init OUT.safetensors --train T.txtpb ... [--tune-exits]\n";

static int parse_list(const char *text, double *out, int max, const char *what) {
  int n = 0;
  const char *p = text;
  while (*p) {
    char *end;
    double v = strtod(p, &end);
    if (end == p || n == max || (*end && *end != ',')) {
      fprintf(stderr, "eellm convert: %s: cannot read '%s' as a comma-separated list\n", what, text);
      return -1;
    }
    out[n++] = v;
    p = *end ? end + 1 : end;
  }
  return n;
}

static int structure_of(const char *name) {
  const ProtobufCEnumValue *v = NULL;
  char upper[16];
  size_t i = 0;
  for (; name[i] && i + 1 < sizeof upper; i++) upper[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
  upper[i] = 0;
  v = protobuf_c_enum_descriptor_get_value_by_name(&eellm__exit__structure__descriptor, upper);
  return v ? v->value : -1;
}

/* Index of tensor `name` in m, or -1. */
static long tensor_index(const eellm_model *m, const char *name) {
  for (size_t i = 0; i < eellm_model_n_tensors(m); i++)
    if (strcmp(eellm_model_tensor_name(m, i), name) == 0) return (long)i;
  return -1;
}

/* Tensor i of `to` takes the values of `from`'s tensor from_name, if it has one. */
static void copy_tensor(eellm_model *to, size_t i, eellm_model *from, const char *from_name) {
  long j = tensor_index(from, from_name);
  if (j < 0) return;
  size_t r, c;
  eellm_model_tensor_shape(to, i, &r, &c);
  memcpy(eellm_model_tensor_data(to, i), eellm_model_tensor_data(from, (size_t)j),
         (r ? r : 1) * c * sizeof(float));
}

/* Where a new exit's tensor comes from under --init copy. */
static void copy_source(const Eellm__Model *spec, const char *suffix, char *src, size_t n) {
  unsigned last = spec->n_layers - 1;
  if (strncmp(suffix, "ln_f.", 5) == 0)
    snprintf(src, n, "transformer.%s", suffix);
  else if (strcmp(suffix, "lm_head.weight") == 0)
    snprintf(src, n, "%s", spec->tie_embeddings ? "transformer.wte.weight" : "lm_head.weight");
  else if (strncmp(suffix, "h.", 2) == 0)
    snprintf(src, n, "transformer.h.%u.%s", last, suffix + 2);
  else
    snprintf(src, n, "transformer.h.%u.%s", last, suffix);
}

static Eellm__Exit *new_exit(unsigned layer, int structure, int tied, double weight) {
  Eellm__Exit *e = malloc(sizeof *e);
  if (!e) abort();
  eellm__exit__init(e);
  e->has_layer = e->has_structure = e->has_tied = e->has_loss_weight = 1;
  e->layer = layer;
  e->structure = structure;
  e->tied = tied;
  e->loss_weight = (float)weight;
  return e;
}

static int add_exits(const char *in, const char *out, const double *layers, int n_layers,
                     const double *weights, int n_weights, int structure, int tied, int copy,
                     unsigned long seed) {
  char err[1024];
  Eellm__Model *spec = eellm_checkpoint_spec(in, err, sizeof err);
  if (!spec) {
    fprintf(stderr, "eellm convert: %s\n", err);
    return 2;
  }
  size_t old_n = spec->n_exits;
  Eellm__Exit **exits = malloc((old_n + n_layers) * sizeof *exits);
  if (!exits) abort();
  memcpy(exits, spec->exits, old_n * sizeof *exits);
  for (int i = 0; i < n_layers; i++)
    exits[old_n + i] = new_exit((unsigned)layers[i], structure, tied, n_weights ? weights[i] : 1.0);
  Eellm__Model grown = *spec;
  grown.exits = exits;
  grown.n_exits = old_n + n_layers;
  int status = 0;
  if (eellm_model_spec_check(&grown, out, err, sizeof err) != 0) {
    fprintf(stderr, "eellm convert: %s\n", err);
    status = 2;
  }
  eellm_model *from = NULL, *to = NULL;
  if (status == 0 && eellm_runtime_start(err, sizeof err) != 0) {
    fprintf(stderr, "eellm convert: %s\n", err);
    status = 1;
  }
  if (status == 0 && (!(from = eellm_model_create(spec, 1, 1, err, sizeof err)) ||
                      !(to = eellm_model_create(&grown, 1, 1, err, sizeof err)) ||
                      eellm_model_load(from, in, err, sizeof err) != 0)) {
    fprintf(stderr, "eellm convert: %s\n", err);
    status = 2;
  }
  if (status == 0) {
    eellm_model_init(to, seed);
    eellm_model_set_tokenizer(to, eellm_model_tokenizer(from));
    eellm_model_sync(from);
    eellm_model_sync(to);
    for (size_t i = 0; i < eellm_model_n_tensors(to); i++) {
      const char *name = eellm_model_tensor_name(to, i);
      unsigned k;
      int used;
      if (sscanf(name, "exits.%u.%n", &k, &used) == 1 && k >= old_n) {
        if (!copy) continue;
        char src[128];
        copy_source(spec, name + used, src, sizeof src);
        copy_tensor(to, i, from, src);
      } else {
        copy_tensor(to, i, from, name);
      }
    }
    if (eellm_model_save(to, out, err, sizeof err) != 0) {
      fprintf(stderr, "eellm convert: %s\n", err);
      status = 1;
    } else {
      printf("%s: %zu exits added (%s init), %zu parameters -> %zu; wrote %s\n", in,
             (size_t)n_layers, copy ? "copy" : "random", eellm_model_n_params(from),
             eellm_model_n_params(to), out);
    }
  }
  eellm_model_destroy(from);
  eellm_model_destroy(to);
  if (from || to || status == 1) eellm_runtime_stop();
  for (int i = 0; i < n_layers; i++) free(exits[old_n + i]);
  free(exits);
  eellm_model_spec_free(spec);
  return status;
}

int cmd_convert(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "add-exits") != 0) {
    int help = argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
    fputs(convert_usage, help ? stdout : stderr);
    return help ? 0 : 2;
  }
  static const struct option options[] = {
      {"ckpt", required_argument, 0, 'c'},  {"exits", required_argument, 0, 'x'},
      {"out", required_argument, 0, 'o'},   {"structure", required_argument, 0, 's'},
      {"init", required_argument, 0, 'i'},  {"weights", required_argument, 0, 'w'},
      {"tied", no_argument, 0, 't'},        {"seed", required_argument, 0, 'S'},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
  const char *in = NULL, *out = NULL, *exits_arg = NULL, *weights_arg = NULL;
  int structure = EELLM__EXIT__STRUCTURE__NORM, tied = 0, copy = 1;
  unsigned long seed = 1234;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc - 1, argv + 1, "h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': in = optarg; break;
      case 'x': exits_arg = optarg; break;
      case 'o': out = optarg; break;
      case 'w': weights_arg = optarg; break;
      case 't': tied = 1; break;
      case 'S': seed = strtoul(optarg, NULL, 10); break;
      case 's':
        if ((structure = structure_of(optarg)) < 0) {
          fprintf(stderr, "eellm convert: --structure '%s': expected plain, norm, mlp or block\n", optarg);
          return 2;
        }
        break;
      case 'i':
        if (strcmp(optarg, "copy") != 0 && strcmp(optarg, "random") != 0) {
          fprintf(stderr, "eellm convert: --init '%s': expected copy or random\n", optarg);
          return 2;
        }
        copy = strcmp(optarg, "copy") == 0;
        break;
      case 'h': fputs(convert_usage, stdout); return 0;
      default: fputs(convert_usage, stderr); return 2;
    }
  }
  if (!in || !out || !exits_arg) {
    fprintf(stderr, "eellm convert: --ckpt, --exits and --out are required\n");
    return 2;
  }
  double layers[64], weights[64];
  int n_layers = parse_list(exits_arg, layers, 64, "--exits");
  int n_weights = weights_arg ? parse_list(weights_arg, weights, 64, "--weights") : 0;
  if (n_layers <= 0 || n_weights < 0) return 2;
  if (n_weights && n_weights != n_layers) {
    fprintf(stderr, "eellm convert: --weights gives %d values for %d exits\n", n_weights, n_layers);
    return 2;
  }
  for (int i = 0; i < n_layers; i++)
    if (layers[i] < 1 || layers[i] != (unsigned)layers[i]) {
      fprintf(stderr, "eellm convert: --exits: '%g' is not a layer number\n", layers[i]);
      return 2;
    }
  return add_exits(in, out, layers, n_layers, weights, n_weights, structure, tied, copy, seed);
}
