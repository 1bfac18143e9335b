/* Whole-model check against PyTorch: builds small early-exit models, runs one
 * step of two micro-batches as StarPU tasks, writes the weights through a real
 * eellm checkpoint and the batch, losses and gradients beside it, and has
 * tests/torch_parity.py rebuild the model in PyTorch (float64) and compare
 * every exit's loss and every parameter's gradient (max relative error 1e-4).
 * parity_exitopts.txtpb covers EE-LLM's exit options: MLP exits reading the
 * layer's ln_2 output and dynamically weighted exit losses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eellm.h"
#include "runtime/io/safetensors.h"
#include "testutil.h"

enum { MICRO = 2, BATCH = 2, SEQ = 13 };

static void random_batch(int32_t *tokens, int32_t *targets, float *mask, size_t n, unsigned vocab) {
  for (size_t i = 0; i < n; i++) {
    tokens[i] = (int32_t)tu_uniform(0, vocab);
    targets[i] = (int32_t)tu_uniform(0, vocab);
    mask[i] = tu_uniform(0, 1) < 0.8 ? 1.0f : 0.0f;
  }
}

/* step.safetensors: tokens/targets/mask [MICRO, BATCH, SEQ], losses [n_exits], grad.<name>. */
static int write_step(eellm_model *m, const char *path, int32_t *tokens, int32_t *targets,
                      float *mask, double *losses) {
  size_t n = eellm_model_n_tensors(m);
  struct eellm_st_tensor *t = calloc(n + 4, sizeof *t);
  char (*names)[128] = calloc(n, sizeof *names);
  if (!t || !names) return -1;
  size_t rows = (size_t)MICRO * BATCH * SEQ;
  t[0] = (struct eellm_st_tensor){"tokens", EELLM_I32, 3, {MICRO, BATCH, SEQ}, tokens, rows * 4};
  t[1] = (struct eellm_st_tensor){"targets", EELLM_I32, 3, {MICRO, BATCH, SEQ}, targets, rows * 4};
  t[2] = (struct eellm_st_tensor){"mask", EELLM_F32, 3, {MICRO, BATCH, SEQ}, mask, rows * 4};
  t[3] = (struct eellm_st_tensor){"losses", EELLM_F64,
                                  1,        {eellm_model_n_exits(m)},
                                  losses,   eellm_model_n_exits(m) * sizeof(double)};
  for (size_t i = 0; i < n; i++) {
    size_t r, c;
    eellm_model_tensor_shape(m, i, &r, &c);
    snprintf(names[i], sizeof names[i], "grad.%s", eellm_model_tensor_name(m, i));
    t[4 + i] = (struct eellm_st_tensor){names[i], EELLM_F32, r ? 2 : 1, {r ? (int64_t)r : (int64_t)c, (int64_t)c},
                                        eellm_model_tensor_grad(m, i), (r ? r : 1) * c * sizeof(float)};
  }
  char err[256];
  int ret = eellm_st_write(path, t, n + 4, NULL, 0, err, sizeof err);
  if (ret != 0) printf("%s\n", err);
  free(t);
  free(names);
  return ret;
}

static void check_model(const char *spec_path) {
  char err[512];
  Eellm__Model *spec = eellm_model_spec_load(spec_path, err, sizeof err);
  if (!tu_ok(spec != NULL, spec_path)) {
    printf("%s\n", err);
    return;
  }
  eellm_model *m = eellm_model_create(spec, BATCH, SEQ, err, sizeof err);
  if (!tu_ok(m != NULL, "model create")) {
    printf("%s\n", err);
    eellm_model_spec_free(spec);
    return;
  }
  eellm_model_init(m, 7);
  /* Larger weights than GPT-2's 0.02 so every path carries a visible gradient. */
  for (size_t i = 0; i < eellm_model_n_tensors(m); i++) {
    size_t r, c;
    eellm_model_tensor_shape(m, i, &r, &c);
    float *p = eellm_model_tensor_data(m, i);
    for (size_t j = 0; j < (r ? r : 1) * c; j++) p[j] = r ? p[j] * 10 : p[j] + (float)tu_uniform(-0.3, 0.3);
  }
  size_t rows = (size_t)MICRO * BATCH * SEQ;
  int32_t *tokens = malloc(rows * sizeof *tokens), *targets = malloc(rows * sizeof *targets);
  float *mask = malloc(rows * sizeof *mask);
  double losses[16] = {0};
  random_batch(tokens, targets, mask, rows, spec->vocab_size);

  eellm_model_submit_zero_grads(m);
  for (int mi = 0; mi < MICRO; mi++) {
    size_t off = (size_t)mi * BATCH * SEQ;
    struct eellm_batch b = {tokens + off, targets + off, mask + off};
    tu_ok(eellm_model_submit_forward_backward(m, &b, NULL, 1.0f / MICRO, err, sizeof err) == 0,
          "submit micro-batch");
  }
  eellm_model_wait(m);
  eellm_model_sync(m);
  for (unsigned k = 0; k < eellm_model_n_exits(m); k++) losses[k] = eellm_model_exit_loss(m, k);

  const char *dir = tu_tempdir();
  char ckpt[512], step[512], cmd[2048];
  snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", dir);
  snprintf(step, sizeof step, "%s/step.safetensors", dir);
  tu_ok(eellm_model_save(m, ckpt, err, sizeof err) == 0, "checkpoint written");
  tu_ok(write_step(m, step, tokens, targets, mask, losses) == 0, "step file written");
  snprintf(cmd, sizeof cmd, "/usr/bin/python3 tests/torch_parity.py %s", dir);
  fflush(stdout);
  tu_ok(system(cmd) == 0, "PyTorch parity");

  free(tokens);
  free(targets);
  free(mask);
  eellm_model_destroy(m);
  eellm_model_spec_free(spec);
}

int main(void) {
  tu_start();
  tu_seed(11);
  check_model("tests/specs/parity_gpt.txtpb");
  check_model("tests/specs/parity_llama.txtpb");
  check_model("tests/specs/parity_exitopts.txtpb");
  return tu_finish();
}
