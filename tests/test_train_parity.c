/* Three AdamW steps of a small early-exit model (2 micro-batches, warm-up
 * learning rate, gradient clipping, two exits with different weights) against
 * PyTorch on the same weights and data: every step's per-exit losses and every
 * updated parameter (tests/torch_train_parity.py, max relative error 1e-4). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eellm.h"
#include "runtime/io/safetensors.h"
#include "testutil.h"

enum { STEPS = 3 };

int main(void) {
  tu_start();
  tu_seed(5);
  char err[512];
  Eellm__Model *spec = eellm_model_spec_load("tests/specs/parity_train.txtpb", err, sizeof err);
  Eellm__Train *train =
      spec ? eellm_train_spec_load("tests/specs/parity_train.train.txtpb", spec, err, sizeof err) : NULL;
  if (!tu_ok(spec && train, "specs load")) {
    printf("%s\n", err);
    return tu_finish();
  }
  unsigned micro = train->micro_batches, batch = train->global_batch / micro, seq = train->seq_len;
  eellm_model *m = eellm_model_create(spec, batch, seq, err, sizeof err);
  eellm_model_init(m, 3);
  eellm_model_sync(m);
  /* Biases and gains away from 0 and 1, so their updates show. */
  for (size_t i = 0; i < eellm_model_n_tensors(m); i++) {
    size_t r, c;
    eellm_model_tensor_shape(m, i, &r, &c);
    float *p = eellm_model_tensor_data(m, i);
    for (size_t j = 0; !r && j < c; j++) p[j] += (float)tu_uniform(-0.2, 0.2);
  }

  const char *dir = tu_tempdir();
  char path[256], cmd[1024];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  tu_ok(eellm_model_save(m, path, err, sizeof err) == 0, "initial checkpoint");

  size_t rows = (size_t)STEPS * micro * batch * seq;
  int32_t *tokens = malloc(rows * sizeof *tokens), *targets = malloc(rows * sizeof *targets);
  double losses[STEPS][8], lrs[STEPS], norms[STEPS];
  for (size_t i = 0; i < rows; i++) {
    tokens[i] = (int32_t)tu_uniform(0, spec->vocab_size);
    targets[i] = (int32_t)tu_uniform(0, spec->vocab_size);
  }
  for (unsigned step = 1; step <= STEPS; step++) {
    eellm_model_submit_zero_grads(m);
    for (unsigned mi = 0; mi < micro; mi++) {
      size_t off = ((size_t)(step - 1) * micro + mi) * batch * seq;
      struct eellm_batch b = {tokens + off, targets + off, NULL};
      tu_ok(eellm_model_submit_forward_backward(m, &b, NULL, 1.0f / micro, err, sizeof err) == 0,
            "submit");
    }
    lrs[step - 1] = eellm_train_spec_lr_at(train, step);
    eellm_model_submit_optimizer(m, train->optimizer, step, lrs[step - 1]);
    eellm_model_wait(m);
    norms[step - 1] = eellm_model_grad_norm(m);
    for (unsigned k = 0; k < eellm_model_n_exits(m); k++)
      losses[step - 1][k] = eellm_model_exit_loss(m, k);
  }
  snprintf(path, sizeof path, "%s/after.safetensors", dir);
  tu_ok(eellm_model_save(m, path, err, sizeof err) == 0, "final checkpoint");
  double flat_losses[STEPS * 8];
  unsigned n_exits = eellm_model_n_exits(m);
  for (unsigned s = 0; s < STEPS; s++)
    for (unsigned k = 0; k < n_exits; k++) flat_losses[s * n_exits + k] = losses[s][k];
  struct eellm_st_tensor t[] = {
      {"tokens", EELLM_I32, 4, {STEPS, micro, batch, seq}, tokens, rows * 4},
      {"targets", EELLM_I32, 4, {STEPS, micro, batch, seq}, targets, rows * 4},
      {"losses", EELLM_F64, 2, {STEPS, n_exits}, flat_losses, STEPS * n_exits * 8},
      {"lr", EELLM_F64, 1, {STEPS}, lrs, sizeof lrs},
      {"grad_norm", EELLM_F64, 1, {STEPS}, norms, sizeof norms},
  };
  snprintf(path, sizeof path, "%s/steps.safetensors", dir);
  tu_ok(eellm_st_write(path, t, 5, NULL, 0, err, sizeof err) == 0, "steps file");
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/torch_train_parity.py %s %.9g %.9g %.9g %.9g %.9g",
           dir, train->optimizer->beta1, train->optimizer->beta2, train->optimizer->eps,
           train->optimizer->weight_decay, train->optimizer->grad_clip);
  fflush(stdout);
  tu_ok(system(cmd) == 0, "PyTorch parity over 3 AdamW steps");
  free(tokens);
  free(targets);
  eellm_model_destroy(m);
  eellm_train_spec_free(train);
  eellm_model_spec_free(spec);
  return tu_finish();
}
