/* Submitting a model graph from C with the public API alone: load a spec, build
 * the model's data handles, submit forward and backward for two micro-batches
 * of random tokens as StarPU tasks, and print each exit's loss.
 *
 *   example_submit examples/default.txtpb
 *
 * An untrained model predicts uniformly, so every exit's loss is close to
 * log(vocab_size). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <eellm.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.txtpb\n", argv[0]);
    return 2;
  }
  char err[512];
  Eellm__Model *spec = eellm_model_spec_load(argv[1], err, sizeof err);
  if (!spec) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  if (eellm_runtime_start(err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }

  unsigned batch = 2, seq = spec->context_length < 64 ? spec->context_length : 64;
  eellm_model *model = eellm_model_create(spec, batch, seq, err, sizeof err);
  if (!model) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  eellm_model_init(model, 1234);

  enum { MICRO_BATCHES = 2 };
  size_t n = (size_t)batch * seq;
  int32_t *tokens = malloc(MICRO_BATCHES * (n + 1) * sizeof *tokens);
  if (!tokens) return 1;
  srand(1);
  for (size_t i = 0; i < MICRO_BATCHES * (n + 1); i++) tokens[i] = rand() % spec->vocab_size;

  eellm_model_submit_zero_grads(model);
  for (unsigned mb = 0; mb < MICRO_BATCHES; mb++) {
    /* Targets are the inputs shifted by one token. */
    struct eellm_batch b = {tokens + mb * (n + 1), tokens + mb * (n + 1) + 1, NULL};
    if (eellm_model_submit_forward_backward(model, &b, NULL, 1.0f / MICRO_BATCHES, err,
                                            sizeof err)) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
  }
  eellm_model_wait(model);

  printf("%zu parameters, %u exits (log(vocab) = %.4f)\n", eellm_model_n_params(model),
         eellm_model_n_exits(model), log(spec->vocab_size));
  for (unsigned k = 0; k < eellm_model_n_exits(model); k++)
    printf("exit %u (layer %u%s): loss %.4f\n", k, eellm_model_exit_layer(model, k),
           k + 1 == eellm_model_n_exits(model) ? ", final" : "", eellm_model_exit_loss(model, k));

  free(tokens);
  eellm_model_destroy(model);
  eellm_runtime_stop();
  eellm_model_spec_free(spec);
  return 0;
}
