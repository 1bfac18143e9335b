/* eellm serve: EE-LLM's text generation API over HTTP. */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include <eellm.h>
#include <eellm/eval.h>
#include <eellm/generate.h>
#include "serve/mirror.h"
#include "serve/server.h"

static const char serve_usage[] =
    "usage: eellm serve --ckpt RUN [--host ADDR] [--port N] [--max-batch N]\n"
    "                   [--request-slots N] [--header-timeout S]\n"
    "                   [--tokenizer-dir DIR] [--method recompute|pipeline]\n"
    "                   [--exit-rule maxprob|entropy] [--tp T] [--bf16-heads]\n"
    "\n"
    "Serves early-exit generation over HTTP with EE-LLM's API: PUT /api with a JSON\n"
    "body, answered in JSON. Stops cleanly on SIGINT or SIGTERM (a second one kills).\n"
    "Under scripts/eellm-mpirun N the model runs as N / T pipeline stages of T\n"
    "tensor-parallel ranks each (one stage per rank without --tp); rank 0 serves HTTP\n"
    "and the other ranks follow its generation step by step.\n"
    "\n"
    "  --ckpt RUN           a run directory (its checkpoint.safetensors) or a checkpoint\n"
    "  --host ADDR          address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)\n"
    "  --port N             port (default 5000; 0 picks a free one, printed at start)\n"
    "  --max-batch N        prompts generating at once (default 8): prompts of any\n"
    "                       requests join the running batch at the next step and\n"
    "                       leave it when they finish (continuous batching)\n"
    "  --request-slots N    prompts one request may have generating at once (default\n"
    "                       max-batch / 2, at least 1): its other prompts wait and\n"
    "                       join as its earlier ones finish, so a request of many\n"
    "                       prompts cannot hold back small ones\n"
    "  --header-timeout S   seconds a client has to send a request's header (default\n"
    "                       10), however steadily the bytes trickle; bodies have 60\n"
    "  --tokenizer-dir DIR  where gpt2's encoder.json and vocab.bpe are (default\n"
    "                       $EELLM_TOKENIZER_DIR, else data/gpt2)\n"
    "  --method M           recompute (KV recomputation, default) or pipeline: the\n"
    "                       method of requests without \"method\"\n"
    "  --exit-rule R        maxprob (a token exits when its top probability reaches the\n"
    "                       threshold, EE-LLM's rule; default) or entropy (1 - entropy /\n"
    "                       log(vocabulary) reaches it)\n"
    "  --tp T               under mpirun: tensor-parallel ranks per stage (default 1)\n"
    "  --bf16-heads         steps of up to 8 rows read bf16 copies of the heads' weights\n"
    "                       (half the bytes per token, fp32 products; one process)\n"
    "\n"
    "Request fields (all but prompts optional; the README lists EE-LLM's others):\n"
    "  prompts             a string or a list of strings (at most 1024)\n"
    "  tokens_to_generate  integer from 0 (scoring) to the context (default 64)\n"
    "  use_early_exit      true or false (default false)\n"
    "  early_exit_thres    number in (0, 1] (default: the checkpoint's calibrated threshold\n"
    "                      for --exit-rule, from eellm eval --calibrate; else 1, every token\n"
    "                      through the final head)\n"
    "  exit_layers         list of the model's exit layers that may fire (default []: all;\n"
    "                      the final layer may be listed too)\n"
    "  temperature         number in [0, 100] (default 1; 0: greedy)\n"
    "  top_k               integer >= 0 (default 0: off)\n"
    "  top_p               number in [0, 1] (default 1; 0 and 1: off)\n"
    "  top_p_decay, top_p_bound  after each token top_p = top_p * decay, not under the\n"
    "                      bound (EE-LLM's rule; default 0 and 0: top_p stays)\n"
    "  random_seed         integer >= 0 (default: the server picks one)\n"
    "  logprobs            true or false (default false)\n"
    "  prevent_newline_after_colon  true: never a newline token right after a ':'\n"
    "  method              recompute, pipeline or speculative (default: --method)\n"
    "  draft_exit          speculative (required): the layer of the exit that drafts\n"
    "  draft_tokens        speculative: tokens drafted a round, 1..16 (default 3);\n"
    "                      greedy, the full model's tokens (exits off)\n"
    "Answer, a list per prompt: text (the generated text, after the prompt with\n"
    "echo_prompts), segments (each of its tokens as text), tokens (their ids),\n"
    "exit_layers (for each generated token, the layer of the exit that produced it),\n"
    "logprobs (each generated token's log-probability, when asked). Generation stops\n"
    "early after the end-of-text token (kept) or when the context is full; a prompt\n"
    "must leave room for one token.\n"
    "Bad requests get a 4xx status and {\"error\": \"...\"}; bodies are limited to 1 MiB.\n"
    "A malformed request line or two different Content-Length headers get 400.\n"
    "Connections: 64 at most, 16 per client address; past 56, each new one closes\n"
    "the oldest one still waiting for its header.\n"
    "\n"
    "  curl -X PUT http://127.0.0.1:5000/api -d '{\"prompts\": [\"Hello\"], \"tokens_to_generate\": 16}'\n"
    "\n"
    "Exit status: 0 stopped by a signal, 1 runtime failure (address in use, ...), 2 bad\n"
    "usage or bad checkpoint (one line on stderr).\n";

struct serve_options {
  const char *ckpt, *host, *tokenizer_dir;
  const char *ckpt_path; /* the checkpoint file */
  unsigned port, max_batch, request_slots, header_timeout, tp;
  int bf16_heads;
  enum eellm_exit_rule rule;
  enum eellm_gen_method method;
};

/* An integer option in [min, max]; -1 after a message. */
static int parse_unsigned(const char *name, const char *text, unsigned long min,
                          unsigned long max, unsigned *out) {
  char *end;
  unsigned long value = strtoul(text, &end, 10);
  if (!*text || *end || text[0] == '-' || value < min || value > max) {
    fprintf(stderr, "eellm serve: %s wants an integer from %lu to %lu, got '%s'\n", name, min,
            max, text);
    return -1;
  }
  *out = (unsigned)value;
  return 0;
}

/* 0, 1 for --help, or 2 after a message. */
static int parse_options(int argc, char **argv, struct serve_options *o) {
  static const struct option options[] = {
      {"ckpt", required_argument, 0, 'c'},          {"host", required_argument, 0, 'H'},
      {"port", required_argument, 0, 'p'},          {"max-batch", required_argument, 0, 'b'},
      {"tokenizer-dir", required_argument, 0, 't'}, {"method", required_argument, 0, 'm'},
      {"exit-rule", required_argument, 0, 'r'},     {"help", no_argument, 0, 'h'},
      {"request-slots", required_argument, 0, 's'}, {"header-timeout", required_argument, 0, 'T'},
      {"tp", required_argument, 0, 'P'},            {"bf16-heads", no_argument, 0, 'B'},
      {0, 0, 0, 0}};
  *o = (struct serve_options){.host = "127.0.0.1", .port = 5000, .max_batch = 8, .tp = 1};
  int opt;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': o->ckpt = optarg; break;
      case 'B': o->bf16_heads = 1; break;
      case 'H': o->host = optarg; break;
      case 't': o->tokenizer_dir = optarg; break;
      case 'p':
        if (parse_unsigned("--port", optarg, 0, 65535, &o->port)) return 2;
        break;
      case 'b':
        if (parse_unsigned("--max-batch", optarg, 1, 1024, &o->max_batch)) return 2;
        break;
      case 's':
        if (parse_unsigned("--request-slots", optarg, 1, 1024, &o->request_slots)) return 2;
        break;
      case 'T':
        if (parse_unsigned("--header-timeout", optarg, 1, 3600, &o->header_timeout)) return 2;
        break;
      case 'P':
        if (parse_unsigned("--tp", optarg, 1, 1024, &o->tp)) return 2;
        break;
      case 'm':
        if (strcmp(optarg, "recompute") != 0 && strcmp(optarg, "pipeline") != 0) {
          fprintf(stderr, "eellm serve: --method is recompute or pipeline, not '%s'\n", optarg);
          return 2;
        }
        o->method = optarg[0] == 'p' ? EELLM_GEN_PIPELINE : EELLM_GEN_RECOMPUTE;
        break;
      case 'r':
        if (strcmp(optarg, "maxprob") != 0 && strcmp(optarg, "entropy") != 0) {
          fprintf(stderr, "eellm serve: --exit-rule is maxprob or entropy, not '%s'\n", optarg);
          return 2;
        }
        o->rule = optarg[0] == 'e' ? EELLM_EXIT_ENTROPY : EELLM_EXIT_MAXPROB;
        break;
      case 'h': fputs(serve_usage, stdout); return 1;
      default: fputs(serve_usage, stderr); return 2;
    }
  }
  if (o->request_slots > o->max_batch) {
    fprintf(stderr, "eellm serve: --request-slots %u is over --max-batch %u\n", o->request_slots,
            o->max_batch);
    return 2;
  }
  if (optind != argc || !o->ckpt) {
    if (!o->ckpt) fprintf(stderr, "eellm serve: --ckpt is required\n");
    fputs(serve_usage, stderr);
    return 2;
  }
  return 0;
}

/* The checkpoint file: path itself, or a run directory's checkpoint.safetensors (malloc'd). */
static char *checkpoint_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return strdup(path);
  size_t n = strlen(path) + sizeof "/checkpoint.safetensors";
  char *file = malloc(n);
  if (file) snprintf(file, n, "%s/checkpoint.safetensors", path);
  return file;
}

static int compare_unsigned(const void *a, const void *b) {
  unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
  return (x > y) - (x < y);
}

/* The layers with an exit, ascending (malloc'd; NULL when there is none). */
static unsigned *exit_layers(const Eellm__Model *spec) {
  unsigned *layers = spec->n_exits ? malloc(spec->n_exits * sizeof *layers) : NULL;
  for (size_t k = 0; layers && k < spec->n_exits; k++) layers[k] = spec->exits[k]->layer;
  if (layers) qsort(layers, spec->n_exits, sizeof *layers, compare_unsigned);
  return layers;
}

/* Waits for SIGINT or SIGTERM (blocked in every thread), then lets a second one kill. */
static void wait_for_stop(const sigset_t *stop) {
  int signal_number;
  sigwait(stop, &signal_number);
  fprintf(stderr, "eellm serve: %s: stopping after the running generation\n",
          strsignal(signal_number));
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  pthread_sigmask(SIG_UNBLOCK, stop, NULL);
}

/* Serves until a signal; 0, or 1 when the server cannot start. */
static int serve(struct eellm_generator *g, const struct serve_options *o,
                 const Eellm__Model *spec, const sigset_t *stop) {
  unsigned *exits = exit_layers(spec);
  struct eellm_server_config c = {.host = o->host,
                                  .port = o->port,
                                  .max_batch = o->max_batch,
                                  .request_slots = o->request_slots,
                                  .header_timeout = o->header_timeout,
                                  .tokenizer_dir = o->tokenizer_dir,
                                  .n_layers = spec->n_layers,
                                  .exits = exits,
                                  .n_exits = exits ? spec->n_exits : 0,
                                  .rule = o->rule,
                                  .method = o->method};
  /* Requests without early_exit_thres get the calibrated threshold, if stored. */
  char terr[512];
  if (eellm_checkpoint_threshold(o->ckpt_path, o->rule, &c.threshold, terr, sizeof terr) != 1)
    c.threshold = 0;
  char err[512];
  struct eellm_server *s = eellm_server_start(g, &c, err, sizeof err);
  if (!s) {
    fprintf(stderr, "eellm serve: %s\n", err);
    free(exits);
    return 1;
  }
  const char *open = strchr(o->host, ':') ? "[" : "", *close = *open ? "]" : "";
  printf("eellm serve: %s on http://%s%s%s:%u/api (context %u, max batch %u, %u per request)\n",
         spec->name, open, o->host, close, eellm_server_port(s), eellm_generator_context(g),
         o->max_batch,
         o->request_slots ? o->request_slots : eellm_server_default_request_slots(o->max_batch));
  if (c.threshold > 0)
    printf("eellm serve: default early_exit_thres %.4g (calibrated)\n", (double)c.threshold);
  fflush(stdout);
  wait_for_stop(stop);
  eellm_server_stop(s);
  free(exits);
  return 0;
}

/* Whether any rank failed to open the generator; the lowest that did says why. */
static int any_failed(int failed, const char *err) {
  int ranks = eellm_nranks(), lowest = ranks - eellm_mpi_max(failed ? ranks - eellm_rank() : 0);
  if (failed && lowest == eellm_rank()) fprintf(stderr, "eellm serve: %s\n", err);
  return lowest < ranks;
}

/* Rank 0 serves; under mpirun the other ranks follow its generation until it stops. */
static int serve_on_rank(struct eellm_generator *g, const struct serve_options *o,
                         const Eellm__Model *spec, const sigset_t *stop) {
  char err[512];
  if (eellm_rank() != 0) {
    if (eellm_mirror_follow(g, err, sizeof err) == 0) return 0;
    fprintf(stderr, "eellm serve: rank %d: %s\n", eellm_rank(), err);
    return 1;
  }
  int rc = serve(g, o, spec, stop);
  if (rc != 0) { /* no generation thread to tell the followers: they stop here */
    struct eellm_mirror *r = eellm_mirror_new();
    eellm_mirror_send(r, EELLM_MIRROR_STOP);
    eellm_mirror_free(r);
  }
  return rc;
}

int cmd_serve(int argc, char **argv) {
  struct serve_options o;
  int rc = parse_options(argc, argv, &o);
  if (rc) return rc == 1 ? 0 : rc;
  char *ckpt = checkpoint_path(o.ckpt);
  o.ckpt_path = ckpt;
  char err[512];
  Eellm__Model *spec = ckpt ? eellm_checkpoint_spec(ckpt, err, sizeof err) : NULL;
  if (!spec) {
    fprintf(stderr, "eellm serve: %s\n", ckpt ? err : "out of memory");
    free(ckpt);
    return 2;
  }
  /* Blocked before any thread starts, so that every thread inherits the mask and the
   * signals reach sigwait; a client gone mid-answer must not kill the server. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);
  signal(SIGPIPE, SIG_IGN);
  rc = 1;
  if ((eellm_launched_by_mpirun() && eellm_mpi_init(err, sizeof err) != 0) ||
      eellm_runtime_start(err, sizeof err) != 0) {
    fprintf(stderr, "eellm serve: %s\n", err);
  } else {
    struct eellm_generator *g =
        eellm_generator_open_parallel(ckpt, o.tokenizer_dir, o.max_batch, o.tp, err, sizeof err);
    if (any_failed(!g, err) ||
        (o.bf16_heads &&
         any_failed(eellm_generator_use_bf16_heads(g, err, sizeof err) != 0, err))) {
      rc = 2;
    } else {
      rc = serve_on_rank(g, &o, spec, &stop);
    }
    eellm_generator_close(g);
  }
  eellm_runtime_stop();
  eellm_model_spec_free(spec);
  free(ckpt);
  return rc;
}
