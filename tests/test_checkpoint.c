/* Model checkpoints: weights and AdamW state round-trip exactly; a checkpoint
 * of another spec, a truncated file or a stray tensor is refused with an error
 * naming the file and the tensor, and leaves the model untouched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eellm.h"
#include "testutil.h"

static Eellm__Model *small_spec(unsigned d_model, int with_mlp_exit) {
  Eellm__Model *m = malloc(sizeof *m);
  eellm__model__init(m);
  m->has_vocab_size = m->has_context_length = m->has_d_model = m->has_n_heads = 1;
  m->has_n_layers = 1;
  m->vocab_size = 31;
  m->context_length = 8;
  m->d_model = d_model;
  m->n_heads = 2;
  m->n_layers = 3;
  m->n_exits = 1;
  m->exits = malloc(sizeof *m->exits);
  m->exits[0] = malloc(sizeof **m->exits);
  eellm__exit__init(m->exits[0]);
  m->exits[0]->has_layer = 1;
  m->exits[0]->layer = 1;
  if (with_mlp_exit) {
    m->exits[0]->has_structure = m->exits[0]->has_tied = 1;
    m->exits[0]->structure = EELLM__EXIT__STRUCTURE__MLP;
    m->exits[0]->tied = 0;
  }
  return m;
}

static void free_spec(Eellm__Model *m) {
  free(m->exits[0]);
  free(m->exits);
  free(m);
}

static int same_params(eellm_model *a, eellm_model *b) {
  eellm_model_sync(a);
  eellm_model_sync(b);
  for (size_t i = 0; i < eellm_model_n_tensors(a); i++) {
    size_t r, c;
    eellm_model_tensor_shape(a, i, &r, &c);
    if (memcmp(eellm_model_tensor_data(a, i), eellm_model_tensor_data(b, i),
               (r ? r : 1) * c * sizeof(float)) != 0)
      return 0;
  }
  return 1;
}

static int file_copy_prefix(const char *from, const char *to, long drop) {
  FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
  if (!in || !out) return -1;
  fseek(in, 0, SEEK_END);
  long size = ftell(in) - drop;
  rewind(in);
  for (long i = 0; i < size; i++) fputc(fgetc(in), out);
  fclose(in);
  return fclose(out);
}

int main(void) {
  tu_start();
  char err[512];
  const char *dir = tu_tempdir();
  char path[256], truncated[256], bad_spec_path[256];
  snprintf(path, sizeof path, "%s/a.safetensors", dir);
  snprintf(truncated, sizeof truncated, "%s/truncated.safetensors", dir);
  snprintf(bad_spec_path, sizeof bad_spec_path, "%s/b.safetensors", dir);

  Eellm__Model *spec = small_spec(16, 1), *other = small_spec(24, 1), *no_mlp = small_spec(16, 0);
  eellm_model *a = eellm_model_create(spec, 1, 8, err, sizeof err);
  eellm_model *b = eellm_model_create(spec, 1, 8, err, sizeof err);
  eellm_model_init(a, 1);
  eellm_model_init(b, 2);
  tu_ok(!same_params(a, b), "different seeds give different weights");

  struct eellm_train_state saved = {.step = 17, .seed = 99}, loaded = {0};
  tu_ok(eellm_model_save_checkpoint(a, path, &saved, err, sizeof err) == 0,
        "training checkpoint saved");
  tu_ok(eellm_model_load_checkpoint(b, path, &loaded, err, sizeof err) == 0,
        "training checkpoint loaded");
  tu_ok(same_params(a, b), "weights round-trip exactly");
  tu_ok(loaded.step == 17 && loaded.seed == 99, "step and seed round-trip");

  /* The stored spec comes back, and equals the model's. */
  Eellm__Model *stored = eellm_checkpoint_spec(path, err, sizeof err);
  char field[128];
  tu_ok(stored && eellm_spec_diff(&stored->base, &spec->base, field, sizeof field) == 0,
        "stored spec equals the model's");
  tu_ok(eellm_spec_diff(&spec->base, &other->base, field, sizeof field) == 1 &&
            strcmp(field, "d_model") == 0,
        "spec diff names d_model");
  tu_ok(eellm_spec_diff(&spec->base, &no_mlp->base, field, sizeof field) == 1 &&
            strcmp(field, "exits[0].structure") == 0,
        "spec diff names exits[0].structure");
  eellm_model_spec_free(stored);

  /* A model of another width: refused, naming the tensor and both shapes. */
  eellm_model *c = eellm_model_create(other, 1, 8, err, sizeof err);
  int ret = eellm_model_load(c, path, err, sizeof err);
  tu_ok(ret != 0 && strstr(err, path) && strstr(err, "transformer.wte.weight") &&
            strstr(err, "expected F32 [31, 24], found F32 [31, 16]"),
        "other width refused with the tensor's shapes");
  printf("  %s\n", err);

  /* A model without the MLP exit: the checkpoint's extra tensors are refused. */
  eellm_model *d = eellm_model_create(no_mlp, 1, 8, err, sizeof err);
  ret = eellm_model_load(d, path, err, sizeof err);
  tu_ok(ret != 0 && strstr(err, "is not in the model's spec"), "stray tensor refused");
  printf("  %s\n", err);

  /* Truncated: refused, and the model keeps its weights. */
  eellm_model_init(b, 3);
  eellm_model *b_copy = eellm_model_create(spec, 1, 8, err, sizeof err);
  eellm_model_init(b_copy, 3);
  tu_ok(file_copy_prefix(path, truncated, 5) == 0, "truncated copy");
  ret = eellm_model_load(b, truncated, err, sizeof err);
  tu_ok(ret != 0 && strstr(err, truncated), "truncated checkpoint refused");
  printf("  %s\n", err);
  tu_ok(same_params(b, b_copy), "a refused load leaves the weights untouched");

  /* Weights-only checkpoints have no training state to resume. */
  tu_ok(eellm_model_save(a, bad_spec_path, err, sizeof err) == 0, "weights-only save");
  ret = eellm_model_load_checkpoint(b, bad_spec_path, &loaded, err, sizeof err);
  tu_ok(ret != 0 && strstr(err, "no training state"), "weights-only has no training state");

  eellm_model_destroy(a);
  eellm_model_destroy(b);
  eellm_model_destroy(b_copy);
  eellm_model_destroy(c);
  eellm_model_destroy(d);
  free_spec(spec);
  free_spec(other);
  free_spec(no_mlp);
  return tu_finish();
}
