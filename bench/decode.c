/* Greedy decoding at full depth on a model with random weights, the eellm side
 * of bench/decode: writes the checkpoint CKPT (GPT-2 initialisation, seed 1,
 * byte tokenizer) when it does not exist, then for each batch size decodes
 * TOKENS tokens after a prompt of PROMPT tokens per sequence (ids 1 ..
 * PROMPT, every sequence its own), exits off, end-of-text ignored, REPEATS
 * times after one warm-up call, and prints each repeat's rate:
 *
 *   bench_decode [--bf16-heads] SPEC CKPT PROMPT TOKENS REPEATS BATCH...
 *   -> "batch=B tokens_per_s=X" per repeat and batch (generated tokens of all
 *      sequences over the call's seconds, the prompt's step included)
 *
 * --bf16-heads: the heads read bf16 copies of their weights
 * (eellm_generator_use_bf16_heads). */
#include <eellm.h>
#include <eellm/generate.h>
#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int write_random_checkpoint(const char *spec_path, const char *ckpt, char *err,
                                   size_t errlen) {
  Eellm__Model *spec = eellm_model_spec_load(spec_path, err, errlen);
  if (!spec) return -1;
  eellm_model *m = eellm_model_create(spec, 1, spec->context_length, err, errlen);
  eellm_model_spec_free(spec);
  if (!m) return -1;
  eellm_model_init(m, 1);
  eellm_model_set_tokenizer(m, "byte");
  int rc = eellm_model_save(m, ckpt, err, errlen);
  eellm_model_destroy(m);
  return rc;
}

/* One call on `batch` sequences of the prompt: returns the tokens per second. */
static double decode(struct eellm_generator *g, const uint16_t *prompt, size_t prompt_len,
                     unsigned batch, unsigned tokens, char *err, size_t errlen) {
  const uint16_t *prompts[batch];
  size_t lens[batch];
  struct eellm_gen_sequence out[batch];
  for (unsigned i = 0; i < batch; i++) prompts[i] = prompt, lens[i] = prompt_len;
  struct eellm_gen_options o = {.max_tokens = tokens, .threshold = 1, .top_p = 1};
  double start = now_s();
  if (eellm_generate(g, prompts, lens, batch, &o, out, err, errlen) != 0) return -1;
  double seconds = now_s() - start;
  size_t made = 0;
  for (unsigned i = 0; i < batch; i++) {
    made += out[i].n;
    eellm_gen_sequence_free(&out[i]);
  }
  return made / seconds;
}

int main(int argc, char **argv) {
  eellm_blas_fit_cpu(argv);
  int bf16_heads = argc > 1 && strcmp(argv[1], "--bf16-heads") == 0;
  argc -= bf16_heads;
  argv += bf16_heads;
  if (argc < 7) {
    fprintf(stderr,
            "usage: bench_decode [--bf16-heads] SPEC CKPT PROMPT TOKENS REPEATS BATCH...\n");
    return 2;
  }
  const char *spec = argv[1], *ckpt = argv[2];
  size_t prompt_len = (size_t)atoi(argv[3]);
  unsigned tokens = (unsigned)atoi(argv[4]), most = 1;
  int repeats = atoi(argv[5]);
  for (int a = 6; a < argc; a++)
    if ((unsigned)atoi(argv[a]) > most) most = (unsigned)atoi(argv[a]);
  char err[512];
  if (eellm_runtime_start(err, sizeof err) != 0 ||
      (access(ckpt, F_OK) != 0 && write_random_checkpoint(spec, ckpt, err, sizeof err) != 0)) {
    fprintf(stderr, "bench_decode: %s\n", err);
    return 1;
  }
  struct eellm_generator *g = eellm_generator_open(ckpt, NULL, most, err, sizeof err);
  uint16_t *prompt = malloc((prompt_len ? prompt_len : 1) * sizeof *prompt);
  if (!g || !prompt) {
    fprintf(stderr, "bench_decode: %s\n", g ? "out of memory" : err);
    return 1;
  }
  if (bf16_heads && eellm_generator_use_bf16_heads(g, err, sizeof err) != 0) goto fail;
  for (size_t i = 0; i < prompt_len; i++) prompt[i] = (uint16_t)(i + 1);
  if (decode(g, prompt, prompt_len, most, 4, err, sizeof err) < 0) goto fail;
  for (int r = 0; r < repeats; r++)
    for (int a = 6; a < argc; a++) {
      unsigned batch = (unsigned)atoi(argv[a]);
      double rate = decode(g, prompt, prompt_len, batch, tokens, err, sizeof err);
      if (rate < 0) goto fail;
      printf("batch=%u tokens_per_s=%.1f\n", batch, rate);
      fflush(stdout);
    }
  free(prompt);
  eellm_generator_close(g);
  eellm_runtime_stop();
  return 0;
fail:
  fprintf(stderr, "bench_decode: %s\n", err);
  return 1;
}
