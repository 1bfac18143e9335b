/* eellm eval: every exit's validation loss, a teacher-forced threshold sweep
 * (table, JSON, SVG), and calibrated thresholds stored in the checkpoint. */
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include <eellm.h>
#include <eellm/eval.h>
#include <eellm/outfile.h>
#include <eellm/tokens.h>

static const char eval_usage[] =
    "usage: eellm eval --ckpt RUN_DIR|FILE --data VAL.bin [--seq-len T] [--batch B]\n"
    "                  [--max-tokens N] [--thresholds LIST] [--exit-rule maxprob|entropy|both]\n"
    "                  [--json FILE] [--svg FILE] [--baseline-train TRAIN.bin] [--summary]\n"
    "                  [--calibrate (--max-loss-increase X[%] | --min-agreement A)]\n"
    "\n"
    "Evaluates every exit on a token file in one forward pass (all exits at once):\n"
    "each exit's loss and perplexity, then a teacher-forced threshold sweep. At each\n"
    "threshold, a token leaves at the first exit (in layer order) whose confidence\n"
    "reaches it, as in generation; the table gives the share of tokens per exit, the\n"
    "speedup bound (forward FLOPs of full depth over the mean FLOPs per token, the\n"
    "exits evaluated on the way included; KV recomputation not counted), the\n"
    "early-exit loss (cross-entropy of each token's chosen exit on the true next\n"
    "token), its increase over the final head, and top-1 agreement with the final head.\n"
    "\n"
    "  --ckpt PATH          a checkpoint, or a run directory holding checkpoint.safetensors\n"
    "  --data FILE          validation tokens (eellm tokenize); windows of T tokens cover it\n"
    "  --seq-len T          window length (default: the model's context)\n"
    "  --batch B            windows per forward pass (default 4)\n"
    "  --max-tokens N       evaluate only the first N tokens (default: all)\n"
    "  --thresholds LIST    comma-separated thresholds in (0, 1] (default\n"
    "                       1,0.95,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1); the checkpoint's\n"
    "                       calibrated thresholds are added\n"
    "  --exit-rule R        maxprob, entropy or both (default)\n"
    "  --json FILE          the figures as JSON (default: RUN_DIR/eval.json)\n"
    "  --svg FILE           speedup against loss increase, one line per rule (default:\n"
    "                       RUN_DIR/eval.svg)\n"
    "  --calibrate          find, per rule, the lowest threshold (one for all exits) that\n"
    "                       keeps the target on this data at it and at every threshold\n"
    "                       above it (CALM's fixed-sequence order), and store it in the\n"
    "                       checkpoint's metadata: generate and serve use it when no\n"
    "                       threshold is given\n"
    "  --max-loss-increase X  target: early-exit loss at most (1 + X) x the final head's\n"
    "                       (X as 0.01 or 1%)\n"
    "  --min-agreement A    target: top-1 agreement with the final head at least A\n"
    "  --baseline-train FILE  count a trigram model (interpolated Kneser-Ney, discounts from\n"
    "                       its own counts) on these training tokens, score it on the same\n"
    "                       tokens as the exits, and give each exit's loss against it\n"
    "  --summary            after the exits, three lines in place of the sweep table: the\n"
    "                       threshold (the calibrated one, maxprob's first, else the first of\n"
    "                       --thresholds), its speedup bound and shares, its loss increase\n"
    "\n"
    "Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input (one line on stderr).\n";

static const double default_grid[] = {1, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1};
static const char *const rule_names[] = {"maxprob", "entropy"};

struct cli {
  const char *ckpt, *data, *json, *svg, *baseline_train;
  unsigned seq_len, batch;
  size_t max_tokens;
  double thresholds[64];
  size_t n_thresholds;
  unsigned rules; /* bit 1 << rule */
  int calibrate, target_set, summary;
  enum eellm_eval_target target;
  double target_value;
};

static int fail(const char *what, const char *detail) {
  fprintf(stderr, "eellm eval: %s%s\n", what, detail ? detail : "");
  return 2;
}

static int parse_number(const char *text, double lo, double hi, double *out) {
  char *end;
  double v = strtod(text, &end);
  if (end == text || *end || !(v >= lo && v <= hi)) return -1;
  *out = v;
  return 0;
}

static int parse_thresholds(const char *text, struct cli *a) {
  char *copy = strdup(text), *save = NULL;
  a->n_thresholds = 0;
  int ok = copy != NULL;
  for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; ok && t; t = strtok_r(NULL, ",", &save)) {
    double v;
    ok = a->n_thresholds < 64 && parse_number(t, 0, 1, &v) == 0 && v > 0;
    if (ok) a->thresholds[a->n_thresholds++] = v;
  }
  free(copy);
  return ok && a->n_thresholds ? 0 : -1;
}

/* 0 to run, 1 after --help, 2 after a message. */
static int parse_args(int argc, char **argv, struct cli *a) {
  static const struct option options[] = {
      {"ckpt", required_argument, 0, 'c'},       {"data", required_argument, 0, 'd'},
      {"seq-len", required_argument, 0, 'T'},    {"batch", required_argument, 0, 'b'},
      {"max-tokens", required_argument, 0, 'n'}, {"thresholds", required_argument, 0, 't'},
      {"exit-rule", required_argument, 0, 'r'},  {"json", required_argument, 0, 'j'},
      {"svg", required_argument, 0, 's'},        {"calibrate", no_argument, 0, 'C'},
      {"max-loss-increase", required_argument, 0, 'L'},
      {"min-agreement", required_argument, 0, 'A'},
      {"baseline-train", required_argument, 0, 'B'}, {"summary", no_argument, 0, 'S'},
      {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  a->batch = 4;
  a->rules = 3;
  a->n_thresholds = sizeof default_grid / sizeof default_grid[0];
  memcpy(a->thresholds, default_grid, sizeof default_grid);
  optind = 1;
  int opt;
  double v;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': a->ckpt = optarg; break;
      case 'd': a->data = optarg; break;
      case 'j': a->json = optarg; break;
      case 's': a->svg = optarg; break;
      case 'B': a->baseline_train = optarg; break;
      case 'S': a->summary = 1; break;
      case 'T':
        if (parse_number(optarg, 1, 1 << 20, &v) != 0 || v != (unsigned)v)
          return fail("--seq-len wants a positive count, got ", optarg);
        a->seq_len = (unsigned)v;
        break;
      case 'b':
        if (parse_number(optarg, 1, 1 << 16, &v) != 0 || v != (unsigned)v)
          return fail("--batch wants a positive count, got ", optarg);
        a->batch = (unsigned)v;
        break;
      case 'n':
        if (parse_number(optarg, 2, 1e15, &v) != 0 || v != (double)(size_t)v)
          return fail("--max-tokens wants a count of at least 2, got ", optarg);
        a->max_tokens = (size_t)v;
        break;
      case 't':
        if (parse_thresholds(optarg, a) != 0)
          return fail("--thresholds wants up to 64 numbers in (0, 1] like 0.9,0.8, got ", optarg);
        break;
      case 'r':
        if (strcmp(optarg, "maxprob") == 0) a->rules = 1;
        else if (strcmp(optarg, "entropy") == 0) a->rules = 2;
        else if (strcmp(optarg, "both") == 0) a->rules = 3;
        else return fail("--exit-rule is maxprob, entropy or both, got ", optarg);
        break;
      case 'C': a->calibrate = 1; break;
      case 'L': {
        char buf[64];
        size_t len = strlen(optarg);
        int percent = len > 0 && optarg[len - 1] == '%';
        snprintf(buf, sizeof buf, "%.*s", (int)(len - percent), optarg);
        if (len >= sizeof buf || parse_number(buf, 0, percent ? 1e4 : 100, &v) != 0)
          return fail("--max-loss-increase wants a number >= 0 like 0.01 or 1%, got ", optarg);
        a->target = EELLM_TARGET_LOSS_INCREASE;
        a->target_value = percent ? v / 100 : v;
        a->target_set++;
        break;
      }
      case 'A':
        if (parse_number(optarg, 0, 1, &v) != 0)
          return fail("--min-agreement wants a number in [0, 1], got ", optarg);
        a->target = EELLM_TARGET_AGREEMENT;
        a->target_value = v;
        a->target_set++;
        break;
      case 'h': fputs(eval_usage, stdout); return 1;
      default: fputs(eval_usage, stderr); return 2;
    }
  }
  if (optind != argc) return fail("unexpected argument ", argv[optind]);
  if (!a->ckpt) return fail("--ckpt is required", NULL);
  if (!a->data) return fail("--data is required", NULL);
  if (a->calibrate && a->target_set != 1)
    return fail("--calibrate wants one target: --max-loss-increase X or --min-agreement A", NULL);
  if (!a->calibrate && a->target_set)
    return fail("--max-loss-increase and --min-agreement go with --calibrate", NULL);
  return 0;
}

/* ---- output ------------------------------------------------------------------ */

static void json_num(FILE *f, double x) {
  if (isfinite(x))
    fprintf(f, "%.9g", x);
  else
    fputs("null", f);
}

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

struct report {
  const struct cli *a;
  const char *ckpt;
  const Eellm__Model *spec;
  const struct eellm_eval *e;
  struct eellm_eval_point *pts;
  int *calibrated;
  size_t n_pts;
  unsigned T, B;
  const char *calibration; /* the stored line, or NULL */
  const struct eellm_trigram *baseline; /* or NULL */
};

static void print_exits(const struct report *r) {
  const struct eellm_eval *e = r->e;
  unsigned E = eellm_eval_n_exits(e);
  size_t n = eellm_eval_n_tokens(e);
  printf("%s on %s: %zu tokens in windows of %u\n\n", r->spec->name, r->a->data, n, r->T);
  printf("%-6s %6s %9s %11s %13s%s\n", "exit", "layer", "loss", "perplexity", "GFLOPs/token",
         r->baseline ? "  vs trigram" : "");
  for (unsigned j = 0; j < E; j++) {
    double loss = eellm_eval_exit_loss(e, j, 0, n);
    char name[16];
    if (j + 1 == E)
      snprintf(name, sizeof name, "final");
    else
      snprintf(name, sizeof name, "%u", eellm_eval_exit_model_index(e, j));
    printf("%-6s %6u %9.4f %11.3f %13.6f", name, eellm_eval_exit_layer(e, j), loss, exp(loss),
           eellm_eval_exit_flops(e, j) * 1e-9);
    if (r->baseline) printf("  %+10.4f", loss - r->baseline->loss);
    putchar('\n');
  }
  if (r->baseline)
    printf("%-13s %9.4f %11.3f   (Kneser-Ney, counted on %s)\n", "trigram", r->baseline->loss,
           exp(r->baseline->loss), r->a->baseline_train);
  printf("(full depth, no exit: %.6f GFLOPs/token)\n\n", eellm_eval_full_flops(e) * 1e-9);
}

/* Three lines on one point: the first calibrated one, else the first. */
static void print_summary(const struct report *r) {
  size_t i = 0;
  while (i < r->n_pts && !r->calibrated[i]) i++;
  if (i == r->n_pts) i = 0;
  const struct eellm_eval_point *p = &r->pts[i];
  const struct eellm_eval *e = r->e;
  unsigned E = eellm_eval_n_exits(e);
  printf("early exit: threshold %.4g (%s rule, %s)\n", (double)p->threshold, rule_names[p->rule],
         r->calibrated[i] ? "calibrated" : "--thresholds");
  printf("speedup bound %.3fx over full depth; tokens leaving at", p->speedup);
  for (unsigned j = 0; j < E; j++)
    printf(" %s%u %.1f%%%s", j + 1 == E ? "final L" : "L", eellm_eval_exit_layer(e, j),
           100 * p->share[j], j + 1 < E ? "," : "\n");
  printf("loss increase %+.2f%% (%.4f against the final head's %.4f); top-1 agreement %.2f%%\n",
         100 * p->loss_increase, p->loss, p->final_loss, 100 * p->agreement);
}

static void print_sweep(const struct report *r) {
  const struct eellm_eval *e = r->e;
  unsigned E = eellm_eval_n_exits(e);
  printf("%-8s %9s", "rule", "threshold");
  for (unsigned j = 0; j < E; j++) {
    char h[24];
    if (j + 1 == E)
      snprintf(h, sizeof h, "final");
    else
      snprintf(h, sizeof h, "L%u", eellm_eval_exit_layer(e, j));
    printf(" %6s", h);
  }
  printf(" %8s %9s %9s %9s\n", "speedup", "EE loss", "increase", "agree");
  for (size_t i = 0; i < r->n_pts; i++) {
    const struct eellm_eval_point *p = &r->pts[i];
    printf("%-8s %9.4g", rule_names[p->rule], (double)p->threshold);
    for (unsigned j = 0; j < E; j++) printf(" %5.1f%%", 100 * p->share[j]);
    printf(" %7.3fx %9.4f %8.2f%% %8.2f%%%s\n", p->speedup, p->loss, 100 * p->loss_increase,
           100 * p->agreement, r->calibrated[i] ? "  (calibrated)" : "");
  }
  if (r->calibration) printf("\ncalibrated: %s\n", r->calibration);
}

static int write_json(const struct report *r, const char *path, char *err, size_t errlen) {
  struct eellm_outfile out;
  if (eellm_outfile_open(&out, path, err, errlen) != 0) return -1;
  FILE *f = out.fp;
  const struct eellm_eval *e = r->e;
  unsigned E = eellm_eval_n_exits(e);
  size_t n = eellm_eval_n_tokens(e);
  fputs("{\"checkpoint\": ", f);
  json_str(f, r->ckpt);
  fputs(", \"data\": ", f);
  json_str(f, r->a->data);
  fprintf(f, ", \"model\": ");
  json_str(f, r->spec->name);
  fprintf(f, ",\n \"tokens\": %zu, \"seq_len\": %u, \"micro_batch\": %u, \"full_flops\": ", n, r->T,
          r->B);
  json_num(f, eellm_eval_full_flops(e));
  fputs(",\n \"exits\": [", f);
  for (unsigned j = 0; j < E; j++) {
    double loss = eellm_eval_exit_loss(e, j, 0, n);
    fprintf(f, "%s\n  {\"layer\": %u, \"index\": %u, \"final\": %s, \"loss\": ", j ? "," : "",
            eellm_eval_exit_layer(e, j), eellm_eval_exit_model_index(e, j),
            j + 1 == E ? "true" : "false");
    json_num(f, loss);
    fputs(", \"perplexity\": ", f);
    json_num(f, exp(loss));
    fputs(", \"flops\": ", f);
    json_num(f, eellm_eval_exit_flops(e, j));
    fputc('}', f);
  }
  fputs("],\n \"sweep\": [", f);
  for (size_t i = 0; i < r->n_pts; i++) {
    const struct eellm_eval_point *p = &r->pts[i];
    fprintf(f, "%s\n  {\"rule\": \"%s\", \"threshold\": ", i ? "," : "", rule_names[p->rule]);
    json_num(f, p->threshold);
    fprintf(f, ", \"calibrated\": %s, \"share\": [", r->calibrated[i] ? "true" : "false");
    for (unsigned j = 0; j < E; j++) {
      if (j) fputs(", ", f);
      json_num(f, p->share[j]);
    }
    const double v[] = {p->mean_flops, p->speedup, p->loss, p->final_loss, p->loss_increase,
                        p->agreement};
    const char *k[] = {"mean_flops", "speedup", "loss", "final_loss", "loss_increase", "agreement"};
    fputc(']', f);
    for (int q = 0; q < 6; q++) {
      fprintf(f, ", \"%s\": ", k[q]);
      json_num(f, v[q]);
    }
    fputc('}', f);
  }
  fputs("]", f);
  if (r->baseline) {
    fputs(",\n \"baseline\": {\"kind\": \"kneser-ney trigram\", \"train\": ", f);
    json_str(f, r->a->baseline_train);
    fputs(", \"loss\": ", f);
    json_num(f, r->baseline->loss);
    fprintf(f, ", \"tokens\": %zu, \"vocab_size\": %u, \"discounts\": [", r->baseline->scored,
            r->spec->vocab_size);
    for (int q = 0; q < 3; q++) {
      if (q) fputs(", ", f);
      json_num(f, r->baseline->discount[q]);
    }
    fputs("]}", f);
  }
  if (r->calibration) {
    fputs(",\n \"calibration\": ", f);
    json_str(f, r->calibration);
  }
  fputs("}\n", f);
  return eellm_outfile_commit(&out, err, errlen);
}

/* ---- running ------------------------------------------------------------------- */

/* DIR/checkpoint.safetensors for a run directory, else the path itself; *dir the
 * directory for the default outputs. */
static void checkpoint_path(const char *ckpt, char *path, size_t n, char *dir, size_t dn) {
  struct stat st;
  if (stat(ckpt, &st) == 0 && S_ISDIR(st.st_mode)) {
    snprintf(path, n, "%s/checkpoint.safetensors", ckpt);
    snprintf(dir, dn, "%s", ckpt);
  } else {
    snprintf(path, n, "%s", ckpt);
    char *copy = strdup(ckpt);
    snprintf(dir, dn, "%s", copy ? dirname(copy) : ".");
    free(copy);
  }
}

/* Calibrates every chosen rule on all the tokens and stores the thresholds. */
static int calibrate(const struct cli *a, const char *path, const struct eellm_eval *e,
                     size_t n) {
  float t[2] = {1, 1};
  char how[512], err[512];
  for (int rule = 0; rule < 2; rule++) {
    if (!(a->rules & (1u << rule))) continue;
    struct eellm_eval_point p = {0};
    t[rule] = eellm_eval_calibrate(e, (enum eellm_exit_rule)rule, a->target, a->target_value, 0,
                                   n, &p);
  }
  size_t used = snprintf(how, sizeof how, "%s %g on %s (%zu tokens):",
                         a->target == EELLM_TARGET_AGREEMENT ? "min-agreement" : "max-loss-increase",
                         a->target_value, a->data, n);
  for (int rule = 0; rule < 2 && used < sizeof how; rule++)
    if (a->rules & (1u << rule))
      used += snprintf(how + used, sizeof how - used, " %s %.4g", rule_names[rule], (double)t[rule]);
  if (eellm_checkpoint_set_thresholds(path, a->rules, t, how, err, sizeof err) != 0) {
    fprintf(stderr, "eellm eval: %s\n", err);
    return 1;
  }
  return 0;
}

static int evaluate(const struct cli *a, const char *path, const char *dir, eellm_model *m,
                    const Eellm__Model *spec, const uint16_t *tokens, size_t n,
                    const struct eellm_trigram *baseline) {
  char err[512];
  struct eellm_eval *e = eellm_eval_run(m, tokens, n, err, sizeof err);
  if (!e) {
    fprintf(stderr, "eellm eval: %s: %s\n", a->data, err);
    return 2;
  }
  size_t N = eellm_eval_n_tokens(e);
  unsigned E = eellm_eval_n_exits(e);
  int rc = a->calibrate ? calibrate(a, path, e, N) : 0;
  float stored[2];
  int has[2];
  for (int rule = 0; rule < 2; rule++) {
    has[rule] = eellm_checkpoint_threshold(path, (enum eellm_exit_rule)rule, &stored[rule], err,
                                           sizeof err) == 1;
  }
  size_t max_pts = 2 * (a->n_thresholds + 1);
  struct report r = {.a = a, .ckpt = path, .spec = spec, .e = e, .T = eellm_model_seq_len(m),
                     .B = eellm_model_micro_batch(m), .baseline = baseline};
  r.pts = calloc(max_pts, sizeof *r.pts);
  r.calibrated = calloc(max_pts, sizeof *r.calibrated);
  double *shares = calloc(max_pts * E, sizeof *shares);
  if (!r.pts || !r.calibrated || !shares) abort();
  for (int rule = 0; rule < 2 && rc == 0; rule++) {
    if (!(a->rules & (1u << rule))) continue;
    int placed = !has[rule];
    for (size_t i = 0; i <= a->n_thresholds; i++) {
      float t;
      int cal = 0;
      /* The calibrated threshold in its place in the descending grid. */
      if (!placed && (i == a->n_thresholds || stored[rule] >= (float)a->thresholds[i])) {
        t = stored[rule], cal = 1, placed = 1, i--;
      } else if (i < a->n_thresholds) {
        t = (float)a->thresholds[i];
      } else {
        break;
      }
      struct eellm_eval_point *p = &r.pts[r.n_pts];
      p->share = shares + r.n_pts * E;
      eellm_eval_sweep(e, (enum eellm_exit_rule)rule, t, 0, N, p);
      r.calibrated[r.n_pts++] = cal;
    }
  }
  char *calibration = eellm_checkpoint_calibration(path);
  r.calibration = calibration;
  if (rc == 0) {
    print_exits(&r);
    if (a->summary)
      print_summary(&r);
    else
      print_sweep(&r);
  }
  char json[8200], svg[8200];
  snprintf(json, sizeof json, "%s%s", a->json ? "" : dir, a->json ? a->json : "/eval.json");
  snprintf(svg, sizeof svg, "%s%s", a->svg ? "" : dir, a->svg ? a->svg : "/eval.svg");
  if (rc == 0 && write_json(&r, json, err, sizeof err) != 0) {
    fprintf(stderr, "eellm eval: %s\n", err);
    rc = 1;
  }
  char title[256];
  snprintf(title, sizeof title, "%s on %s", spec->name, a->data);
  if (rc == 0 && eellm_eval_plot(svg, title, r.pts, r.calibrated, r.n_pts, err, sizeof err) != 0) {
    fprintf(stderr, "eellm eval: %s\n", err);
    rc = 1;
  }
  if (rc == 0) printf("\nwrote %s and %s\n", json, svg);
  free(calibration);
  free(shares);
  free(r.pts);
  free(r.calibrated);
  eellm_eval_free(e);
  return rc;
}

/* The trigram baseline on the first n tokens of data: 0, or 2 after a message. */
static int compute_baseline(const struct cli *a, const Eellm__Model *spec,
                            const struct eellm_token_file *data, size_t n,
                            struct eellm_trigram *out) {
  char err[512];
  struct eellm_token_file *tf = eellm_tokens_open(a->baseline_train, err, sizeof err);
  if (!tf) return fail(err, NULL);
  int rc = 0;
  if (tf->info.tokenizer != data->info.tokenizer || tf->info.vocab_size != data->info.vocab_size) {
    fprintf(stderr,
            "eellm eval: %s: tokenizer %u with %u ids, but %s has tokenizer %u with %u ids\n",
            a->baseline_train, tf->info.tokenizer, tf->info.vocab_size, a->data,
            data->info.tokenizer, data->info.vocab_size);
    rc = 2;
  } else if (eellm_trigram_baseline(tf->tokens, tf->count, data->tokens, n, spec->vocab_size, out,
                                    err, sizeof err) != 0) {
    fprintf(stderr, "eellm eval: %s: %s\n", a->baseline_train, err);
    rc = 2;
  }
  eellm_tokens_close(tf);
  return rc;
}

int cmd_eval(int argc, char **argv) {
  struct cli a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  char path[4096], dir[4096], err[512];
  checkpoint_path(a.ckpt, path, sizeof path, dir, sizeof dir);
  Eellm__Model *spec = eellm_checkpoint_spec(path, err, sizeof err);
  if (!spec) return fail(err, NULL);
  struct eellm_token_file *tf = eellm_tokens_open(a.data, err, sizeof err);
  if (!tf) {
    eellm_model_spec_free(spec);
    return fail(err, NULL);
  }
  size_t n = tf->count;
  if (a.max_tokens && a.max_tokens < n) n = a.max_tokens;
  unsigned T = a.seq_len ? a.seq_len : spec->context_length;
  rc = 0;
  if (T > spec->context_length) {
    snprintf(err, sizeof err, "--seq-len %u is above the model's context (%u)", T,
             spec->context_length);
    rc = fail(err, NULL);
  } else if (tf->info.vocab_size > spec->vocab_size) {
    snprintf(err, sizeof err, "%s: its vocabulary (%u) is larger than the model's (%u)", a.data,
             tf->info.vocab_size, spec->vocab_size);
    rc = fail(err, NULL);
  } else if (n < 2) {
    snprintf(err, sizeof err, "%s: %zu tokens, evaluation needs at least 2", a.data, n);
    rc = fail(err, NULL);
  }
  struct eellm_trigram baseline;
  if (rc == 0 && a.baseline_train) rc = compute_baseline(&a, spec, tf, n, &baseline);
  /* Fewer windows than a batch: a smaller batch. */
  size_t windows = n >= 2 ? (n - 1 + T - 1) / T : 1;
  unsigned B = windows < a.batch ? (unsigned)windows : a.batch;
  if (rc == 0 && eellm_runtime_start(err, sizeof err) != 0) {
    fprintf(stderr, "eellm eval: %s\n", err);
    rc = 1;
  } else if (rc == 0) {
    eellm_model *m = eellm_model_create(spec, B, T, err, sizeof err);
    if (!m || eellm_model_load(m, path, err, sizeof err) != 0) {
      rc = fail(err, NULL);
    } else {
      rc = evaluate(&a, path, dir, m, spec, tf->tokens, n, a.baseline_train ? &baseline : NULL);
    }
    eellm_model_destroy(m);
    eellm_runtime_stop();
  }
  eellm_tokens_close(tf);
  eellm_model_spec_free(spec);
  return rc;
}
