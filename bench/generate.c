/* Early-exit generation on a trained checkpoint: for each method and exit
 * threshold, greedy generation from a fixed set of prompts (one at a time, as
 * EE-LLM serves them), timed, and the text judged by the full model (the final
 * head, one training forward over each prompt and its continuation):
 * agreement (share of generated tokens that are the full model's own greedy
 * choice after the same prefix) and perplexity of the generated tokens.
 *
 *   bench_generate CKPT [MAX_TOKENS] [REPEATS]   -> a table */
#include <math.h>
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

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
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
static void judge(struct judge *j, const uint16_t *prompt, size_t plen,
                  const struct eellm_gen_sequence *out, struct quality *q) {
  char err[256];
  size_t len = plen + out->n;
  for (size_t t = 0; t < j->C; t++)
    j->tokens[t] = t < plen ? prompt[t] : t < len ? out->tokens[t - plen] : 0;
  struct eellm_batch batch = {j->tokens, j->targets, NULL};
  if (eellm_model_submit_forward(j->m, &batch, err, sizeof err) != 0) abort();
  eellm_model_wait(j->m);
  eellm_model_exit_logits(j->m, eellm_model_n_exits(j->m) - 1, j->logits);
  for (size_t i = 0; i < out->n; i++) {
    const float *z = j->logits + (plen + i - 1) * j->V;
    unsigned best = 0;
    double max = z[0], sum = 0;
    for (unsigned v = 1; v < j->V; v++)
      if (z[v] > z[best]) best = v;
    max = z[best];
    for (unsigned v = 0; v < j->V; v++) sum += exp(z[v] - max);
    q->agree += best == out->tokens[i];
    q->nll += log(sum) + max - z[out->tokens[i]];
    q->tokens++;
  }
}

static const float thresholds[] = {1.0f, 0.9f, 0.8f, 0.6f, 0.4f, 0.2f};
enum {
  N_THRESHOLDS = sizeof thresholds / sizeof thresholds[0],
  N_CONFIGS = 2 * N_THRESHOLDS /* recompute, then pipeline */
};

struct result {
  double seconds[N_PROMPTS]; /* best of the runs */
  double layer_sum, same;
  size_t tokens;
  struct quality q;
};

static struct eellm_gen_options options_of(size_t config, unsigned max_tokens) {
  return (struct eellm_gen_options){.max_tokens = max_tokens,
                                    .use_early_exit = 1,
                                    .threshold = thresholds[config % N_THRESHOLDS],
                                    .method = (enum eellm_gen_method)(config / N_THRESHOLDS),
                                    .top_p = 1};
}

/* The first run of a config on a prompt: the text's quality, its exits, and
 * how much of it is the threshold-1 text of the same method (full, the first
 * config of each method, kept). */
static void account(struct judge *j, const struct eellm_ids *prompt,
                    struct eellm_gen_sequence *out, struct eellm_gen_sequence *full,
                    struct result *r) {
  int first = !full->tokens;
  if (first) *full = *out;
  judge(j, prompt->v, prompt->n, out, &r->q);
  for (size_t i = 0; i < out->n; i++) {
    r->layer_sum += out->exit_layers[i];
    r->same += i < full->n && full->tokens[i] == out->tokens[i];
  }
  r->tokens += out->n;
  if (!first) eellm_gen_sequence_free(out);
}

/* Runs every config on every prompt, `repeats` rounds interleaved, so that the
 * load of a shared machine spreads over all configs; each (config, prompt)
 * keeps its best time. */
static void measure(struct eellm_generator *g, struct judge *j, unsigned max_tokens, int repeats,
                    const struct eellm_ids *ids, struct result *results) {
  struct eellm_gen_sequence full[2][N_PROMPTS] = {{{0}}};
  char err[256];
  for (size_t c = 0; c < N_CONFIGS; c++)
    for (size_t p = 0; p < N_PROMPTS; p++) results[c].seconds[p] = INFINITY;
  for (int rep = 0; rep < repeats; rep++)
    for (size_t c = 0; c < N_CONFIGS; c++) {
      struct eellm_gen_options o = options_of(c, max_tokens);
      for (size_t p = 0; p < N_PROMPTS; p++) {
        const uint16_t *prompt = ids[p].v;
        struct eellm_gen_sequence out;
        double start = now_s();
        if (eellm_generate(g, &prompt, &ids[p].n, 1, &o, &out, err, sizeof err) != 0) {
          fprintf(stderr, "bench_generate: %s\n", err);
          exit(1);
        }
        results[c].seconds[p] = fmin(results[c].seconds[p], now_s() - start);
        if (rep == 0) account(j, &ids[p], &out, &full[c / N_THRESHOLDS][p], &results[c]);
        else eellm_gen_sequence_free(&out);
      }
    }
  for (size_t p = 0; p < N_PROMPTS; p++) {
    eellm_gen_sequence_free(&full[0][p]);
    eellm_gen_sequence_free(&full[1][p]);
  }
}

static void print_table(const struct result *results) {
  printf("%-9s %5s %9s %8s %10s %10s %12s %11s\n", "method", "thr", "tokens/s", "speedup",
         "mean exit", "agreement", "perplexity", "same as 1.0");
  double base = 0;
  for (size_t c = 0; c < N_CONFIGS; c++) {
    const struct result *r = &results[c];
    double seconds = 0;
    for (size_t p = 0; p < N_PROMPTS; p++) seconds += r->seconds[p];
    double rate = r->tokens / seconds;
    if (c % N_THRESHOLDS == 0) base = rate;
    printf("%-9s %5.2f %9.1f %7.2fx %10.2f %9.1f%% %12.3f %10.1f%%\n",
           c / N_THRESHOLDS ? "pipeline" : "recompute", (double)thresholds[c % N_THRESHOLDS], rate,
           rate / base, r->layer_sum / r->tokens, 100.0 * r->q.agree / r->q.tokens,
           exp(r->q.nll / r->q.tokens), 100.0 * r->same / r->tokens);
  }
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: %s CKPT [MAX_TOKENS] [REPEATS]\n", argv[0]);
    return 2;
  }
  char path[4096], err[512];
  struct stat st;
  snprintf(path, sizeof path, stat(argv[1], &st) == 0 && S_ISDIR(st.st_mode)
                                  ? "%s/checkpoint.safetensors" : "%s", argv[1]);
  unsigned max_tokens = argc > 2 ? (unsigned)atoi(argv[2]) : 64;
  int repeats = argc > 3 ? atoi(argv[3]) : 5;
  char start_err[512];
  if (eellm_runtime_start(start_err, sizeof start_err) != 0) {
    fprintf(stderr, "%s\n", start_err);
    return 1;
  }
  struct eellm_generator *g = eellm_generator_open(path, NULL, 1, err, sizeof err);
  Eellm__Model *spec = g ? eellm_checkpoint_spec(path, err, sizeof err) : NULL;
  struct judge j = {0};
  if (spec) j.m = eellm_model_create(spec, 1, spec->context_length, err, sizeof err);
  if (!j.m || eellm_model_load(j.m, path, err, sizeof err) != 0) {
    fprintf(stderr, "bench_generate: %s\n", err);
    return 2;
  }
  j.C = spec->context_length;
  j.V = spec->vocab_size;
  j.tokens = calloc(j.C, sizeof *j.tokens);
  j.targets = calloc(j.C, sizeof *j.targets);
  j.logits = calloc((size_t)j.C * j.V, sizeof *j.logits);
  struct eellm_ids ids[N_PROMPTS] = {{0}};
  for (size_t p = 0; p < N_PROMPTS; p++)
    eellm_tokenizer_encode(eellm_generator_tokenizer(g), prompts[p], strlen(prompts[p]), &ids[p]);

  size_t n_exits = eellm_generator_exit_layers(g, NULL);
  unsigned *layers = calloc(n_exits + 1, sizeof *layers);
  eellm_generator_exit_layers(g, layers);
  printf("%s: %u layers, exits at", path, spec->n_layers);
  for (size_t i = 0; i < n_exits; i++) printf(" %u", layers[i]);
  printf("; %d prompts one at a time, greedy, up to %u tokens each; best of %d runs\n\n",
         N_PROMPTS, max_tokens, repeats);
  static struct result results[N_CONFIGS];
  measure(g, &j, max_tokens, repeats, ids, results);
  print_table(results);

  for (size_t p = 0; p < N_PROMPTS; p++) free(ids[p].v);
  free(layers);
  free(j.tokens);
  free(j.targets);
  free(j.logits);
  eellm_model_destroy(j.m);
  eellm_model_spec_free(spec);
  eellm_generator_close(g);
  eellm_runtime_stop();
  return 0;
}
