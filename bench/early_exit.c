/* Early-exit decoding on a trained checkpoint, at batch 1 (each prompt alone,
 * as EE-LLM serves them) and batch 8 (all prompts in one call): greedy
 * generation from fixed prompts by KV recomputation and by the pipeline method
 * at each exit threshold, and by self-speculation at each draft exit and draft
 * length. Repeats are interleaved over every batch size and method, so that
 * the load of a shared machine spreads over all of them; each keeps its best
 * and median time (the prompts' prefill included). Mean exit: the layer of the
 * exit that produced each token; step depth: the deepest of those over the
 * tokens of one step of a call (token i of each of its sequences), which is
 * how deep the step runs before all of its tokens are known.
 *
 * The text of each method is judged by the full model (the final head, one
 * training forward over each prompt and its continuation):
 * - agreement: the share of generated tokens that are the full model's own
 *   greedy choice after the same prefix;
 * - same: the share of tokens equal to full depth's text (recompute at
 *   threshold 1, same batch) at the same position;
 * - NLL: the full model's mean negative log-likelihood of the generated tokens
 *   (nats/token), and its increase over full depth's text.
 * Speculative greedy decoding is lossless: any token that differs from full
 * depth's stops the bench (status 1).
 *
 *   bench_early_exit CKPT [MAX_TOKENS] [REPEATS]   -> a table per batch size */
#include <math.h>
#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <eellm.h>
#include <eellm/generate.h>
#include <eellm/tokenizer.h>

static const char *const prompts[] = {
    "Fellow-Citizens of the Senate and House of Representatives: ",
    "The state of the Union is ",
    "In the past year, our economy ",
    "We must never forget that ",
    "The Congress has ",
    "Our relations with foreign nations ",
    "I recommend to the Congress ",
    "The Treasury ",
};
enum { N_PROMPTS = sizeof prompts / sizeof prompts[0] };

static const unsigned batch_sizes[] = {1, N_PROMPTS};
static const float thresholds[] = {1.0f, 0.95f, 0.9f, 0.8f, 0.6f, 0.4f};
static const unsigned draft_lengths[] = {2, 3, 4, 6};
enum {
  N_BATCH_SIZES = sizeof batch_sizes / sizeof batch_sizes[0],
  N_THRESHOLDS = sizeof thresholds / sizeof thresholds[0],
  N_DRAFT_LENGTHS = sizeof draft_lengths / sizeof draft_lengths[0],
  MAX_REPEATS = 32
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_early_exit: %s\n", what);
  exit(1);
}

/* The full model: one sequence of the whole context, and its final head's logits. */
struct judge {
  eellm_model *m;
  unsigned C, V;
  int32_t *tokens, *targets;
  float *logits;
};

struct quality {
  size_t agree, tokens;
  double nll;
};

/* Judges out as the continuation of prompt by the full model. */
static void judge(struct judge *j, const struct eellm_ids *prompt,
                  const struct eellm_gen_sequence *out, struct quality *q) {
  char err[256];
  size_t plen = prompt->n, len = plen + out->n;
  for (size_t t = 0; t < j->C; t++)
    j->tokens[t] = t < plen ? prompt->v[t] : t < len ? out->tokens[t - plen] : 0;
  struct eellm_batch batch = {j->tokens, j->targets, NULL};
  if (eellm_model_submit_forward(j->m, &batch, err, sizeof err) != 0) die(err);
  eellm_model_wait(j->m);
  eellm_model_exit_logits(j->m, eellm_model_n_exits(j->m) - 1, j->logits);
  for (size_t i = 0; i < out->n; i++) {
    const float *z = j->logits + (plen + i - 1) * j->V;
    unsigned best = 0;
    double sum = 0;
    for (unsigned v = 1; v < j->V; v++)
      if (z[v] > z[best]) best = v;
    for (unsigned v = 0; v < j->V; v++) sum += exp(z[v] - z[best]);
    q->agree += best == out->tokens[i];
    q->nll += log(sum) + z[best] - z[out->tokens[i]];
    q->tokens++;
  }
}

/* One way of decoding: the generation options but for max_tokens. */
struct config {
  enum eellm_gen_method method;
  float threshold;
  unsigned draft_exit, draft_tokens;
};

/* Full depth first (every batch size's baseline), then recompute and pipeline at
 * each threshold, then speculation at every exit and draft length. */
static size_t make_configs(const unsigned *exit_layers, size_t n_exits, struct config *c) {
  size_t n = 0;
  for (int method = EELLM_GEN_RECOMPUTE; method <= EELLM_GEN_PIPELINE; method++)
    for (size_t t = 0; t < N_THRESHOLDS; t++)
      c[n++] = (struct config){(enum eellm_gen_method)method, thresholds[t], 0, 0};
  for (size_t e = 0; e < n_exits; e++)
    for (size_t d = 0; d < N_DRAFT_LENGTHS; d++)
      c[n++] = (struct config){EELLM_GEN_SPECULATIVE, 1, exit_layers[e], draft_lengths[d]};
  return n;
}

static struct eellm_gen_options options_of(const struct config *c, unsigned max_tokens) {
  return (struct eellm_gen_options){.max_tokens = max_tokens,
                                    .use_early_exit = c->threshold < 1,
                                    .threshold = c->threshold,
                                    .method = c->method,
                                    .top_p = 1,
                                    .draft_exit_layer = c->draft_exit,
                                    .draft_tokens = c->draft_tokens};
}

/* What one (batch size, config) measured. */
struct result {
  double seconds[MAX_REPEATS]; /* each repeat: every prompt generated */
  double layer_sum, same;
  size_t tokens, rounds, drafted, accepted;
  size_t steps, depth_sum; /* decoding steps of the calls, and their deepest exits */
  struct quality q;
};

/* Generates for every prompt, `batch` prompts a call, into out[]; returns the
 * seconds the calls took. Speculation's rounds and drafts add to r. */
static double generate_all(struct eellm_generator *g, const struct eellm_ids *ids, unsigned batch,
                           const struct eellm_gen_options *o, struct eellm_gen_sequence *out,
                           struct result *r) {
  char err[256];
  double seconds = 0;
  for (size_t first = 0; first < N_PROMPTS; first += batch) {
    const uint16_t *group[N_PROMPTS];
    size_t lens[N_PROMPTS];
    for (size_t i = 0; i < batch; i++) {
      group[i] = ids[first + i].v;
      lens[i] = ids[first + i].n;
    }
    double start = now_s();
    if (eellm_generate(g, group, lens, batch, o, out + first, err, sizeof err) != 0) die(err);
    seconds += now_s() - start;
    size_t rounds, drafted, accepted;
    eellm_generator_speculation(g, &rounds, &drafted, &accepted);
    r->rounds += rounds;
    r->drafted += drafted;
    r->accepted += accepted;
  }
  return seconds;
}

/* Token i of every sequence of a call comes from one step, which runs the
 * layers up to the deepest of their exits: adds each step's depth to r. */
static void add_step_depths(const struct eellm_gen_sequence *out, unsigned batch,
                            struct result *r) {
  for (size_t first = 0; first < N_PROMPTS; first += batch)
    for (size_t i = 0;; i++) {
      unsigned deepest = 0;
      for (size_t p = first; p < first + batch; p++)
        if (i < out[p].n && out[p].exit_layers[i] > deepest) deepest = out[p].exit_layers[i];
      if (!deepest) break;
      r->depth_sum += deepest;
      r->steps++;
    }
}

/* The first repeat of a config: its text's quality, its exits, and how much of
 * it is full depth's text (full, kept from the batch size's first config). */
static void account(struct judge *j, const struct eellm_ids *ids, const struct config *c,
                    unsigned batch, struct eellm_gen_sequence *out,
                    const struct eellm_gen_sequence *full, struct result *r) {
  add_step_depths(out, batch, r);
  for (size_t p = 0; p < N_PROMPTS; p++) {
    judge(j, &ids[p], &out[p], &r->q);
    for (size_t i = 0; i < out[p].n; i++) {
      int same = i < full[p].n && full[p].tokens[i] == out[p].tokens[i];
      if (c->method == EELLM_GEN_SPECULATIVE && !same) {
        fprintf(stderr,
                "bench_early_exit: speculative greedy (draft exit %u, %u tokens) differs from "
                "full depth: prompt %zu, token %zu\n",
                c->draft_exit, c->draft_tokens, p, i);
        exit(1);
      }
      r->layer_sum += out[p].exit_layers[i];
      r->same += same;
    }
    r->tokens += out[p].n;
  }
}

struct bench {
  struct eellm_generator *g;
  struct judge j;
  struct eellm_ids ids[N_PROMPTS];
  struct config configs[2 * N_THRESHOLDS + 64 * N_DRAFT_LENGTHS];
  size_t n_configs;
  unsigned max_tokens;
  int repeats;
};

/* Every config at every batch size, repeats interleaved; results[b * n_configs + c]. */
static void measure(struct bench *b, struct result *results) {
  struct eellm_gen_sequence full[N_BATCH_SIZES][N_PROMPTS];
  for (int rep = 0; rep < b->repeats; rep++)
    for (size_t s = 0; s < N_BATCH_SIZES; s++)
      for (size_t c = 0; c < b->n_configs; c++) {
        struct eellm_gen_options o = options_of(&b->configs[c], b->max_tokens);
        struct eellm_gen_sequence out[N_PROMPTS];
        struct result *r = &results[s * b->n_configs + c];
        struct result scratch = {0};
        r->seconds[rep] = generate_all(b->g, b->ids, batch_sizes[s], &o, out, rep ? &scratch : r);
        if (rep == 0 && c == 0) memcpy(full[s], out, sizeof out);
        if (rep == 0) account(&b->j, b->ids, &b->configs[c], batch_sizes[s], out, full[s], r);
        if (rep || c)
          for (size_t p = 0; p < N_PROMPTS; p++) eellm_gen_sequence_free(&out[p]);
      }
  for (size_t s = 0; s < N_BATCH_SIZES; s++)
    for (size_t p = 0; p < N_PROMPTS; p++) eellm_gen_sequence_free(&full[s][p]);
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Tokens per second at the best and at the median repeat. */
static void rates(const struct result *r, int repeats, double *best, double *median) {
  double sorted[MAX_REPEATS];
  memcpy(sorted, r->seconds, repeats * sizeof *sorted);
  qsort(sorted, repeats, sizeof *sorted, compare_doubles);
  *best = r->tokens / sorted[0];
  *median = r->tokens / (repeats % 2 ? sorted[repeats / 2]
                                     : 0.5 * (sorted[repeats / 2 - 1] + sorted[repeats / 2]));
}

static void print_row(const struct config *c, const struct result *r, const struct result *base,
                      int repeats) {
  static const char *const names[] = {"recompute", "pipeline", "speculative"};
  char setting[32], kept[16] = "-", per_round[16] = "-";
  double best, median, base_best, base_median;
  rates(r, repeats, &best, &median);
  rates(base, repeats, &base_best, &base_median);
  if (c->method == EELLM_GEN_SPECULATIVE) {
    snprintf(setting, sizeof setting, "exit %u x %u", c->draft_exit, c->draft_tokens);
    if (r->rounds) {
      snprintf(kept, sizeof kept, "%.1f%%", 100.0 * r->accepted / r->drafted);
      snprintf(per_round, sizeof per_round, "%.2f", (double)r->tokens / r->rounds);
    }
  } else {
    snprintf(setting, sizeof setting, "thr %.2f", (double)c->threshold);
  }
  double nll = r->q.nll / r->q.tokens, base_nll = base->q.nll / base->q.tokens;
  printf(
      "%-11s %-11s %8.1f %8.1f %6.2fx %6.2fx %6.2f %6.2f %7s %6s %8.1f%% %7.1f%% %7.4f "
      "%+7.1f%%\n",
      names[c->method], setting, best, median, best / base_best, median / base_median,
      r->layer_sum / r->tokens, (double)r->depth_sum / r->steps, kept, per_round,
      100.0 * r->q.agree / r->q.tokens, 100.0 * r->same / r->tokens, nll,
      100.0 * (nll / base_nll - 1));
}

static void print_tables(const struct bench *b, const struct result *results) {
  for (size_t s = 0; s < N_BATCH_SIZES; s++) {
    const struct result *rs = &results[s * b->n_configs];
    printf("\nbatch %u (%d prompts, %u per call)\n", batch_sizes[s], N_PROMPTS, batch_sizes[s]);
    printf("%-11s %-11s %8s %8s %7s %7s %6s %6s %7s %6s %9s %8s %7s %8s\n", "method", "setting",
           "tok/s", "tok/s", "speedup", "speedup", "mean", "step", "drafts", "tokens", "agreement",
           "same as", "NLL", "NLL");
    printf("%-11s %-11s %8s %8s %7s %7s %6s %6s %7s %6s %9s %8s %7s %8s\n", "", "", "best",
           "median", "best", "median", "exit", "depth", "kept", "/round", "", "full", "",
           "increase");
    for (size_t c = 0; c < b->n_configs; c++) print_row(&b->configs[c], &rs[c], &rs[0], b->repeats);
  }
}

/* Opens the checkpoint for generation (batches of up to N_PROMPTS) and for judging. */
static int open_bench(const char *path, struct bench *b, char *err, size_t errlen) {
  b->g = eellm_generator_open(path, NULL, N_PROMPTS, err, errlen);
  Eellm__Model *spec = b->g ? eellm_checkpoint_spec(path, err, errlen) : NULL;
  if (!spec) return -1;
  b->j.C = spec->context_length;
  b->j.V = spec->vocab_size;
  b->j.m = eellm_model_create(spec, 1, spec->context_length, err, errlen);
  eellm_model_spec_free(spec);
  if (!b->j.m || eellm_model_load(b->j.m, path, err, errlen) != 0) return -1;
  b->j.tokens = calloc(b->j.C, sizeof *b->j.tokens);
  b->j.targets = calloc(b->j.C, sizeof *b->j.targets);
  b->j.logits = calloc((size_t)b->j.C * b->j.V, sizeof *b->j.logits);
  if (!b->j.tokens || !b->j.targets || !b->j.logits) die("out of memory");
  for (size_t p = 0; p < N_PROMPTS; p++)
    eellm_tokenizer_encode(eellm_generator_tokenizer(b->g), prompts[p], strlen(prompts[p]),
                           &b->ids[p]);
  unsigned exit_layers[64];
  size_t n_exits = eellm_generator_exit_layers(b->g, NULL);
  if (n_exits > 64) return snprintf(err, errlen, "the bench takes at most 64 exits"), -1;
  eellm_generator_exit_layers(b->g, exit_layers);
  b->n_configs = make_configs(exit_layers, n_exits, b->configs);
  printf("%s: %u layers, exits at", path, eellm_generator_n_layers(b->g));
  for (size_t i = 0; i < n_exits; i++) printf(" %u", exit_layers[i]);
  return 0;
}

static void close_bench(struct bench *b) {
  for (size_t p = 0; p < N_PROMPTS; p++) free(b->ids[p].v);
  free(b->j.tokens);
  free(b->j.targets);
  free(b->j.logits);
  eellm_model_destroy(b->j.m);
  eellm_generator_close(b->g);
}

int main(int argc, char **argv) {
  eellm_blas_fit_cpu(argv);
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: %s CKPT [MAX_TOKENS] [REPEATS]\n", argv[0]);
    return 2;
  }
  char path[4096], err[512];
  struct stat st;
  snprintf(path, sizeof path,
           stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode) ? "%s/checkpoint.safetensors" : "%s",
           argv[1]);
  struct bench b = {.max_tokens = argc > 2 ? (unsigned)atoi(argv[2]) : 64,
                    .repeats = argc > 3 ? atoi(argv[3]) : 3};
  if (b.max_tokens < 1 || b.repeats < 1 || b.repeats > MAX_REPEATS) {
    fprintf(stderr, "bench_early_exit: MAX_TOKENS must be >= 1 and REPEATS in 1..%d\n",
            MAX_REPEATS);
    return 2;
  }
  if (eellm_runtime_start(err, sizeof err) != 0) die(err);
  if (open_bench(path, &b, err, sizeof err) != 0) {
    fprintf(stderr, "bench_early_exit: %s\n", err);
    return 2;
  }
  printf("; %u StarPU CPU workers; %d prompts, greedy, %u tokens each; %d repeats\n",
         starpu_cpu_worker_get_count(), N_PROMPTS, b.max_tokens, b.repeats);
  struct result *results = calloc(N_BATCH_SIZES * b.n_configs, sizeof *results);
  if (!results) die("out of memory");
  measure(&b, results);
  print_tables(&b, results);
  printf("\nspeculative greedy: every token equal to full depth's (lossless), checked\n");
  free(results);
  close_bench(&b);
  eellm_runtime_stop();
  return 0;
}
