/* eellm generate: early-exit text generation from a checkpoint. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include <eellm.h>
#include <eellm/eval.h>
#include <eellm/generate.h>
#include <eellm/trace.h>
#include <eellm/tokenizer.h>

static const char generate_usage[] =
    "usage: eellm generate --ckpt RUN_DIR|FILE (--prompt TEXT... | --prompt-file FILE)\n"
    "                      [--max-tokens N] [--threshold T] [--exit-layers A,B,...]\n"
    "                      [--exit-rule maxprob|entropy]\n"
    "                      [--method recompute|pipeline|speculative] [--stages P] [--tp T]\n"
    "                      [--draft-exit L] [--draft-tokens N] [--temperature X] [--top-k K] [--top-p P] [--seed S]\n"
    "                      [--top-p-decay D [--top-p-bound B]] [--prevent-newline-after-colon]\n"
    "                      [--stream] [--show-exits] [--ignore-eot] [--bf16-heads]\n"
    "                      [--tokenizer-dir DIR]\n"
    "                      [--trace FILE.json [--trace-format chrome|paje]]\n"
    "\n"
    "Generates text with early exits: a token leaves at the first allowed exit whose\n"
    "confidence reaches the threshold. Every prompt (each --prompt, or each line of\n"
    "--prompt-file) is one sequence of one batch, with its own exit decisions.\n"
    "\n"
    "  --ckpt PATH          a checkpoint, or a run directory holding checkpoint.safetensors\n"
    "  --max-tokens N       tokens to generate per prompt (default 64; fewer when the\n"
    "                       context fills, or at the end-of-text token)\n"
    "  --threshold T        confidence an exit needs, in (0, 1]; 1 turns exits off; default:\n"
    "                       the checkpoint's calibrated threshold for the rule (eellm eval\n"
    "                       --calibrate), else 1\n"
    "  --exit-layers LIST   layers whose exits may fire (default: all)\n"
    "  --exit-rule RULE     maxprob (largest probability, default) or entropy\n"
    "                       (1 - entropy / log vocabulary)\n"
    "  --method M           recompute (default): deeper layers' keys and values of tokens\n"
    "                       that left early are recomputed with the next token going deeper;\n"
    "                       pipeline: the model runs as stages and a token that leaves early\n"
    "                       lets the next one start while later stages fill their caches;\n"
    "                       speculative: the exit at --draft-exit drafts tokens through\n"
    "                       the shallow layers, the full model verifies them in one pass\n"
    "                       and keeps the prefix it agrees with plus its own next token:\n"
    "                       greedy, the full model's tokens (exits off); sampled, its\n"
    "                       distribution (speculative sampling's acceptance rule)\n"
    "  --draft-exit L       speculative: the layer of the exit that drafts (required)\n"
    "  --draft-tokens N     speculative: tokens drafted a round, 1..16 (default 3)\n"
    "  --stages P           pipeline stages (default: split at the exits; 2 without exits;\n"
    "                       under scripts/eellm-mpirun P, each rank is one stage)\n"
    "  --tp T               under scripts/eellm-mpirun N: T tensor-parallel ranks per stage\n"
    "                       (N / T stages), each layer and head split over them as in\n"
    "                       training (default 1)\n"
    "  --temperature X      0 (default) is greedy; > 0 samples\n"
    "  --top-k K            sample among the K most likely tokens (0: all)\n"
    "  --top-p P            sample from the smallest set holding probability P (1: all)\n"
    "  --top-p-decay D      after each token of a sequence, top-p P becomes P * D, in\n"
    "                       (0, 1] (EE-LLM's top_p_decay; default: P stays)\n"
    "  --top-p-bound B      and never goes under B, in (0, 1] (default: no bound)\n"
    "  --prevent-newline-after-colon  never a newline right after a ':' token (EE-LLM's)\n"
    "  --seed S             random seed for sampling (default 0)\n"
    "  --stream             print tokens as they are produced\n"
    "  --show-exits         a table of each token's exit, and a summary: tokens per exit,\n"
    "                       mean exit layer, tokens/s (speculative: drafts kept)\n"
    "  --ignore-eot         go on past the end-of-text token\n"
    "  --bf16-heads         steps of up to 8 rows (decoding up to 8 prompts) read bf16 copies\n"
    "                       of the heads' weights: half the bytes per token, fp32 products\n"
    "                       on the widened weights (one process)\n"
    "  --trace FILE         record every task (kind, layer, worker, times) into FILE;\n"
    "                       see 'eellm trace'\n"
    "  --trace-format F     chrome (default: Chrome Trace Event JSON) or paje\n"
    "  --tokenizer-dir DIR  where gpt2's encoder.json and vocab.bpe are\n"
    "\n"
    "Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input (one line on stderr).\n";

struct prompts {
  char **text;
  size_t n, cap;
};

static int add_prompt(struct prompts *p, const char *text, size_t len) {
  if (p->n == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 8;
    char **grown = realloc(p->text, p->cap * sizeof *grown);
    if (!grown) return -1;
    p->text = grown;
  }
  if (!(p->text[p->n] = strndup(text, len))) return -1;
  p->n++;
  return 0;
}

/* One prompt per non-empty line. */
static int read_prompt_file(struct prompts *p, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int ret = 0;
  while (ret == 0 && (len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    if (len > 0) ret = add_prompt(p, line, (size_t)len);
  }
  free(line);
  fclose(f);
  return ret;
}

static int parse_layers(const char *text, unsigned **layers, size_t *n) {
  size_t cap = strlen(text) / 2 + 1;
  *layers = calloc(cap, sizeof **layers);
  if (!*layers) return -1;
  for (const char *p = text; *p;) {
    char *end;
    unsigned long v = strtoul(p, &end, 10);
    if (end == p || v < 1 || v > 100000 || (*end && *end != ',') || *n == cap) return -1;
    (*layers)[(*n)++] = (unsigned)v;
    p = *end ? end + 1 : end;
  }
  return *n > 0 ? 0 : -1;
}

static int parse_number(const char *text, double lo, double hi, double *out) {
  char *end;
  double v = strtod(text, &end);
  if (end == text || *end || !(v >= lo && v <= hi)) return -1;
  *out = v;
  return 0;
}

/* ---- output --------------------------------------------------------------------- */

struct printer {
  struct eellm_tokenizer *tok;
  size_t n_seqs;
  struct eellm_bytes buf;
};

/* The bytes of one token; the end-of-text token as its literal name. */
static const char *token_text(struct printer *pr, uint16_t token, size_t *len) {
  pr->buf.n = 0;
  if (eellm_tokenizer_decode(pr->tok, &token, 1, &pr->buf) != 0) pr->buf.n = 0;
  *len = pr->buf.n;
  return pr->buf.v ? pr->buf.v : "";
}

static void on_token(void *ctx, size_t sequence, uint16_t token, unsigned exit_layer,
                     float logprob) {
  (void)exit_layer;
  (void)logprob;
  struct printer *pr = ctx;
  if (token == eellm_tokenizer_eot_id(pr->tok)) return;
  size_t len;
  const char *text = token_text(pr, token, &len);
  if (pr->n_seqs > 1) printf("[%zu] ", sequence + 1);
  fwrite(text, 1, len, stdout);
  if (pr->n_seqs > 1) putchar('\n');
  fflush(stdout);
}

/* Printable, escaped. */
static void print_escaped(const char *text, size_t len) {
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)text[i];
    if (ch == '\n') fputs("\\n", stdout);
    else if (ch == '\t') fputs("\\t", stdout);
    else if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20 || ch == 0x7f) printf("\\x%02x", ch);
    else putchar(ch);
  }
}

/* ANSI colour of an exit: one per exit, the final head plain. */
static const char *exit_colour(unsigned layer, const unsigned *exits, size_t n_exits) {
  static const char *const colours[] = {"\033[31m", "\033[33m", "\033[32m", "\033[36m",
                                        "\033[35m", "\033[34m"};
  for (size_t i = 0; i < n_exits; i++)
    if (exits[i] == layer) return colours[i % (sizeof colours / sizeof colours[0])];
  return "";
}

static void print_text(struct printer *pr, const char *prompt, const struct eellm_gen_sequence *s,
                       int colour, const unsigned *exits, size_t n_exits) {
  fputs(prompt, stdout);
  for (size_t i = 0; i < s->n; i++) {
    if (s->tokens[i] == eellm_tokenizer_eot_id(pr->tok)) continue;
    size_t len;
    const char *text = token_text(pr, s->tokens[i], &len);
    const char *c = colour ? exit_colour(s->exit_layers[i], exits, n_exits) : "";
    fputs(c, stdout);
    fwrite(text, 1, len, stdout);
    if (*c) fputs("\033[0m", stdout);
  }
  putchar('\n');
}

static void print_exit_table(struct printer *pr, const struct eellm_gen_sequence *s,
                             unsigned n_layers) {
  printf("  token  exit layer  logprob  text\n");
  for (size_t i = 0; i < s->n; i++) {
    size_t len;
    const char *text = token_text(pr, s->tokens[i], &len);
    printf("  %5zu  %5u%s  %7.3f  \"", i, s->exit_layers[i],
           s->exit_layers[i] == n_layers ? " (final)" : "        ", (double)s->logprobs[i]);
    print_escaped(text, len);
    printf("\"\n");
  }
}

static void print_summary(const struct eellm_gen_sequence *seqs, size_t n, unsigned n_layers,
                          double seconds) {
  size_t total = 0;
  double layer_sum = 0;
  size_t *per_layer = calloc(n_layers + 1, sizeof *per_layer);
  if (!per_layer) return;
  for (size_t s = 0; s < n; s++)
    for (size_t i = 0; i < seqs[s].n; i++) {
      per_layer[seqs[s].exit_layers[i]]++;
      layer_sum += seqs[s].exit_layers[i];
      total++;
    }
  printf("tokens per exit:");
  for (unsigned l = 1; l <= n_layers; l++)
    if (per_layer[l])
      printf(" layer %u%s %zu (%.1f%%)", l, l == n_layers ? " (final)" : "", per_layer[l],
             100.0 * per_layer[l] / (double)total);
  printf("\nmean exit layer %.2f of %u; %zu tokens in %.3f s: %.1f tokens/s\n",
         total ? layer_sum / (double)total : 0.0, n_layers, total, seconds,
         seconds > 0 ? (double)total / seconds : 0.0);
  free(per_layer);
}

static void print_stages(struct eellm_generator *g, unsigned stages) {
  unsigned *layers = calloc(eellm_generator_n_layers(g), sizeof *layers);
  if (!layers) return;
  unsigned n = eellm_generator_stages(g, stages, layers), first = 1;
  printf("pipeline stages:");
  for (unsigned s = 0; s < n; first += layers[s++]) {
    printf("%s layer", s ? " |" : "");
    if (layers[s] > 1) printf("s %u-%u", first, first + layers[s] - 1);
    else printf(" %u", first);
  }
  putchar('\n');
  free(layers);
}

/* ---- the command ----------------------------------------------------------------- */

struct cli {
  const char *ckpt, *prompt_file, *tokenizer_dir, *trace_path;
  enum eellm_trace_format trace_format;
  struct prompts prompts;
  struct eellm_gen_options o;
  unsigned *exit_layers;
  int stream, show_exits;
  int threshold_given;
  int draft_given;
  unsigned tp;
  int bf16_heads;
};

static int fail(const char *what, const char *detail) {
  fprintf(stderr, "eellm generate: %s%s\n", what, detail ? detail : "");
  return 2;
}

/* Option `name`'s value text, a number in (0, 1], into *out: 0, or 2 after a message. */
static int parse_fraction(const char *name, const char *text, float *out) {
  double v;
  if (parse_number(text, 0, 1, &v) != 0 || v == 0) {
    fprintf(stderr, "eellm generate: %s wants a number in (0, 1], got %s\n", name, text);
    return 2;
  }
  *out = (float)v;
  return 0;
}

static int parse_args(int argc, char **argv, struct cli *a) {
  static const struct option options[] = {
      {"ckpt", required_argument, 0, 'c'},        {"prompt", required_argument, 0, 'p'},
      {"prompt-file", required_argument, 0, 'f'}, {"max-tokens", required_argument, 0, 'n'},
      {"threshold", required_argument, 0, 't'},   {"exit-layers", required_argument, 0, 'l'},
      {"exit-rule", required_argument, 0, 'r'},   {"method", required_argument, 0, 'm'},
      {"stages", required_argument, 0, 'S'},      {"temperature", required_argument, 0, 'T'},
      {"top-k", required_argument, 0, 'k'},       {"top-p", required_argument, 0, 'P'},
      {"seed", required_argument, 0, 's'},        {"stream", no_argument, 0, 'x'},
      {"show-exits", no_argument, 0, 'e'},        {"ignore-eot", no_argument, 0, 'i'},
      {"tokenizer-dir", required_argument, 0, 'd'}, {"help", no_argument, 0, 'h'},
      {"trace", required_argument, 0, 'R'},       {"trace-format", required_argument, 0, 'F'},
      {"draft-exit", required_argument, 0, 'D'},  {"draft-tokens", required_argument, 0, 'N'},
      {"top-p-decay", required_argument, 0, 'y'}, {"top-p-bound", required_argument, 0, 'b'},
      {"prevent-newline-after-colon", no_argument, 0, 'C'}, {"tp", required_argument, 0, 'X'},
      {"bf16-heads", no_argument, 0, 'B'},        {0, 0, 0, 0}};
  a->o = (struct eellm_gen_options){.max_tokens = 64, .use_early_exit = 1, .threshold = 1,
                                    .top_p = 1, .stop_at_eot = 1, .draft_tokens = 3};
  int opt;
  double v;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': a->ckpt = optarg; break;
      case 'p':
        if (add_prompt(&a->prompts, optarg, strlen(optarg)) != 0)
          return fail("out of memory", NULL);
        break;
      case 'f': a->prompt_file = optarg; break;
      case 'R': a->trace_path = optarg; break;
      case 'F':
        if (eellm_trace_format_parse(optarg, &a->trace_format) != 0)
          return fail("--trace-format wants chrome or paje, got ", optarg);
        break;
      case 'n':
        if (parse_number(optarg, 0, 1e9, &v) != 0 || v != (unsigned)v)
          return fail("--max-tokens wants a count, got ", optarg);
        a->o.max_tokens = (unsigned)v;
        break;
      case 't':
        if (parse_fraction("--threshold", optarg, &a->o.threshold)) return 2;
        a->threshold_given = 1;
        break;
      case 'l':
        if (parse_layers(optarg, &a->exit_layers, &a->o.n_exit_layers) != 0)
          return fail("--exit-layers wants layers like 2,4, got ", optarg);
        a->o.exit_layers = a->exit_layers;
        break;
      case 'r':
        if (strcmp(optarg, "maxprob") && strcmp(optarg, "entropy"))
          return fail("--exit-rule is maxprob or entropy, got ", optarg);
        a->o.rule = strcmp(optarg, "entropy") == 0 ? EELLM_EXIT_ENTROPY : EELLM_EXIT_MAXPROB;
        break;
      case 'm':
        if (strcmp(optarg, "recompute") && strcmp(optarg, "pipeline") &&
            strcmp(optarg, "speculative"))
          return fail("--method is recompute, pipeline or speculative, got ", optarg);
        a->o.method = strcmp(optarg, "pipeline") == 0      ? EELLM_GEN_PIPELINE
                      : strcmp(optarg, "speculative") == 0 ? EELLM_GEN_SPECULATIVE
                                                           : EELLM_GEN_RECOMPUTE;
        break;
      case 'D':
        if (parse_number(optarg, 1, 100000, &v) != 0 || v != (unsigned)v)
          return fail("--draft-exit wants a layer, got ", optarg);
        a->o.draft_exit_layer = (unsigned)v;
        a->draft_given = 1;
        break;
      case 'N':
        if (parse_number(optarg, 1, EELLM_MAX_DRAFT_TOKENS, &v) != 0 || v != (unsigned)v)
          return fail("--draft-tokens wants a count in 1..16, got ", optarg);
        a->o.draft_tokens = (unsigned)v;
        a->draft_given = 1;
        break;
      case 'S':
        if (parse_number(optarg, 1, 100000, &v) != 0 || v != (unsigned)v)
          return fail("--stages wants a positive count, got ", optarg);
        a->o.stages = (unsigned)v;
        break;
      case 'B': a->bf16_heads = 1; break;
      case 'X':
        if (parse_number(optarg, 1, 100000, &v) != 0 || v != (unsigned)v)
          return fail("--tp wants a positive count, got ", optarg);
        a->tp = (unsigned)v;
        break;
      case 'T':
        if (parse_number(optarg, 0, 1e6, &v) != 0)
          return fail("--temperature wants a number >= 0, got ", optarg);
        a->o.temperature = (float)v;
        break;
      case 'k':
        if (parse_number(optarg, 0, 1e9, &v) != 0 || v != (unsigned)v)
          return fail("--top-k wants a count, got ", optarg);
        a->o.top_k = (unsigned)v;
        break;
      case 'P':
        if (parse_fraction("--top-p", optarg, &a->o.top_p)) return 2;
        break;
      case 'y':
        if (parse_fraction("--top-p-decay", optarg, &a->o.top_p_decay)) return 2;
        break;
      case 'b':
        if (parse_fraction("--top-p-bound", optarg, &a->o.top_p_bound)) return 2;
        break;
      case 'C': a->o.prevent_newline_after_colon = 1; break;
      case 's':
        if (parse_number(optarg, 0, 1.8e19, &v) != 0 || v != (double)(unsigned long long)v)
          return fail("--seed wants a non-negative integer, got ", optarg);
        a->o.seed = strtoull(optarg, NULL, 10);
        break;
      case 'x': a->stream = 1; break;
      case 'e': a->show_exits = 1; break;
      case 'i': a->o.stop_at_eot = 0; break;
      case 'd': a->tokenizer_dir = optarg; break;
      case 'h': fputs(generate_usage, stdout); return 0;
      default: fputs(generate_usage, stderr); return 2;
    }
  }
  if (optind != argc) return fail("unexpected argument ", argv[optind]);
  if (!a->ckpt) return fail("--ckpt is required", NULL);
  int spec = a->o.method == EELLM_GEN_SPECULATIVE;
  if (a->draft_given && !spec)
    return fail("--draft-exit and --draft-tokens go with --method speculative", NULL);
  if (spec && !a->o.draft_exit_layer)
    return fail("--method speculative needs --draft-exit L (a layer with an exit)", NULL);
  if (a->o.top_p_bound > 0 && a->o.top_p_decay == 0)
    return fail("--top-p-bound goes with --top-p-decay", NULL);
  if (a->prompt_file && read_prompt_file(&a->prompts, a->prompt_file) != 0)
    return fail("cannot read --prompt-file ", a->prompt_file);
  if (a->prompts.n == 0) return fail("no prompt: give --prompt TEXT or --prompt-file FILE", NULL);
  return -1;
}

/* DIR/checkpoint.safetensors for a run directory, else the path itself. */
static void checkpoint_path(const char *ckpt, char *path, size_t n) {
  struct stat st;
  if (stat(ckpt, &st) == 0 && S_ISDIR(st.st_mode))
    snprintf(path, n, "%s/checkpoint.safetensors", ckpt);
  else
    snprintf(path, n, "%s", ckpt);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void print_results(struct cli *a, struct printer *pr, struct eellm_generator *g,
                          const struct eellm_gen_sequence *out, double seconds) {
  unsigned n_layers = eellm_generator_n_layers(g);
  size_t n_exits = eellm_generator_exit_layers(g, NULL);
  unsigned *exits = calloc(n_exits + 1, sizeof *exits);
  if (!exits) return;
  eellm_generator_exit_layers(g, exits);
  /* mpirun relays lines, not a terminal's colours. */
  int colour = a->show_exits && isatty(STDOUT_FILENO) && !eellm_launched_by_mpirun();
  if (a->stream && a->prompts.n == 1) putchar('\n');
  for (size_t s = 0; s < a->prompts.n; s++) {
    if (!a->stream || a->prompts.n > 1) {
      if (a->prompts.n > 1) printf("==> prompt %zu <==\n", s + 1);
      print_text(pr, a->prompts.text[s], &out[s], colour, exits, n_exits);
    }
    if (a->show_exits) print_exit_table(pr, &out[s], n_layers);
  }
  if (a->show_exits) print_summary(out, a->prompts.n, n_layers, seconds);
  if (a->show_exits && a->o.method == EELLM_GEN_PIPELINE) print_stages(g, a->o.stages);
  if (a->show_exits && a->o.method == EELLM_GEN_SPECULATIVE) {
    size_t rounds, drafted, kept;
    eellm_generator_speculation(g, &rounds, &drafted, &kept);
    printf("speculation: draft exit layer %u, %zu rounds, %zu of %zu drafts kept (%.1f%%)\n",
           a->o.draft_exit_layer, rounds, kept, drafted,
           drafted ? 100.0 * (double)kept / (double)drafted : 0.0);
  }
  free(exits);
}

/* Under mpirun every rank learns whether any failed, and the lowest rank that
 * did says why: one line, however many ranks share the reason. */
static int any_failed(int failed, const char *err) {
  int ranks = eellm_nranks(), lowest = ranks - eellm_mpi_max(failed ? ranks - eellm_rank() : 0);
  if (failed && lowest == eellm_rank()) fprintf(stderr, "eellm generate: %s\n", err);
  return lowest < ranks;
}

/* Under mpirun (each rank one pipeline stage) every rank runs the same
 * generation; rank 0 alone prints. */
static int run(struct cli *a) {
  char path[4096], err[512];
  int tracing = 0;
  checkpoint_path(a->ckpt, path, sizeof path);
  char start_err[512];
  if ((eellm_launched_by_mpirun() && eellm_mpi_init(start_err, sizeof start_err) != 0) ||
      eellm_runtime_start(start_err, sizeof start_err) != 0) {
    fprintf(stderr, "eellm generate: %s\n", start_err);
    eellm_runtime_stop();
    return 1;
  }
  int printing = eellm_rank() == 0;
  unsigned tp = a->tp ? a->tp : 1;
  if (eellm_nranks() > 1 && a->o.method == EELLM_GEN_PIPELINE && !a->o.stages)
    a->o.stages = (unsigned)eellm_nranks() / tp;
  int status = 2;
  size_t n = a->prompts.n;
  struct eellm_generator *g =
      eellm_generator_open_parallel(path, a->tokenizer_dir, (unsigned)n, tp, err, sizeof err);
  struct eellm_ids *ids = calloc(n, sizeof *ids);
  const uint16_t **prompts = calloc(n, sizeof *prompts);
  size_t *lens = calloc(n, sizeof *lens);
  struct eellm_gen_sequence *out = calloc(n, sizeof *out);
  struct printer pr = {.n_seqs = n};
  if (any_failed(!g, err)) goto done;
  if (a->bf16_heads && any_failed(eellm_generator_use_bf16_heads(g, err, sizeof err) != 0, err))
    goto done;
  if (!ids || !prompts || !lens || !out) goto done;
  /* No --threshold: the one `eellm eval --calibrate` stored for this rule, if any. */
  float calibrated;
  if (!a->threshold_given &&
      eellm_checkpoint_threshold(path, a->o.rule, &calibrated, err, sizeof err) == 1) {
    a->o.threshold = calibrated;
    if (printing)
      fprintf(stderr, "eellm generate: threshold %.4g (calibrated, from the checkpoint)\n",
              (double)calibrated);
  }
  if (a->trace_path) {
    eellm_mpi_max(0); /* the barrier before the ranks' clocks start */
    int failed = eellm_trace_start(a->trace_path, a->trace_format, eellm_rank(), eellm_nranks(),
                                   err, sizeof err) != 0;
    char why[600];
    snprintf(why, sizeof why, "--trace %s", err);
    if (any_failed(failed, why)) goto done;
  }
  tracing = a->trace_path != NULL;
  pr.tok = eellm_generator_tokenizer(g);
  for (size_t s = 0; s < n; s++) {
    const char *text = a->prompts.text[s];
    if (eellm_tokenizer_encode(pr.tok, text, strlen(text), &ids[s]) != 0) goto done;
    prompts[s] = ids[s].v;
    lens[s] = ids[s].n;
  }
  if (a->stream && printing) {
    a->o.on_token = on_token;
    a->o.ctx = &pr;
    if (n == 1) fputs(a->prompts.text[0], stdout);
  }
  double start = now_s();
  if (any_failed(eellm_generate(g, prompts, lens, n, &a->o, out, err, sizeof err) != 0, err))
    goto done;
  if (printing) print_results(a, &pr, g, out, now_s() - start);
  status = 0;
  if (tracing) {
    tracing = 0;
    long traced = eellm_trace_stop(err, sizeof err);
    if (traced < 0) {
      fprintf(stderr, "eellm generate: --trace %s\n", err);
      status = 1;
    } else {
      char file[4200];
      eellm_trace_rank_path(a->trace_path, eellm_rank(), eellm_nranks(), file, sizeof file);
      fprintf(stderr, "trace: %ld tasks in %s\n", traced, file);
    }
  }
done:
  if (tracing) eellm_trace_stop(err, sizeof err); /* a failed run's trace, kept for a look */
  for (size_t s = 0; out && s < n; s++) eellm_gen_sequence_free(&out[s]);
  for (size_t s = 0; ids && s < n; s++) free(ids[s].v);
  free(ids);
  free(prompts);
  free(lens);
  free(out);
  free(pr.buf.v);
  eellm_generator_close(g);
  eellm_runtime_stop();
  return status;
}

int cmd_generate(int argc, char **argv) {
  struct cli a = {0};
  int status = parse_args(argc, argv, &a);
  if (status < 0) status = run(&a);
  for (size_t i = 0; i < a.prompts.n; i++) free(a.prompts.text[i]);
  free(a.prompts.text);
  free(a.exit_layers);
  return status;
}
