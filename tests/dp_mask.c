/* `dp_mask OUT`: one training step's gradients under a loss mask that weighs
 * the replicas' shares unequally (14 and 3 tokens), on as many data-parallel
 * replicas as there are ranks. Rank 0 writes each exit's loss and every
 * tensor's gradient after the optimizer's all-reduce (learning rate 0) to OUT,
 * one "name value..." line each; tests/data_parallel_mpi.sh runs it in one
 * process and on 2 ranks and compares the files. */
#include <stdio.h>
#include <stdlib.h>

#include "eellm.h"

enum { SEQUENCES = 2, SEQ_LEN = 16, ROWS = SEQUENCES * SEQ_LEN };

static int die(const char *what, const char *err) {
  fprintf(stderr, "dp_mask: %s: %s\n", what, err);
  return 1;
}

static void write_result(eellm_model *m, FILE *out) {
  for (unsigned k = 0; k < eellm_model_n_exits(m); k++)
    fprintf(out, "loss.%u %.9g\n", k, eellm_model_exit_loss(m, k));
  for (size_t i = 0; i < eellm_model_n_tensors(m); i++) {
    size_t rows, cols;
    eellm_model_tensor_shape(m, i, &rows, &cols);
    const float *grad = eellm_model_tensor_grad(m, i);
    fprintf(out, "%s", eellm_model_tensor_name(m, i));
    for (size_t j = 0; j < (rows ? rows : 1) * cols; j++) fprintf(out, " %.9g", grad[j]);
    fputc('\n', out);
  }
}

/* One step on a micro-batch whose mask keeps 14 tokens of sequence 0 and 3 of sequence 1. */
static void step(eellm_model *m, char *err, size_t errlen) {
  static int32_t tokens[ROWS], targets[ROWS];
  static float mask[ROWS];
  for (int i = 0; i < ROWS; i++) {
    tokens[i] = (i * 37 + 11) % 257;
    targets[i] = (i * 53 + 5) % 257;
    mask[i] = i < SEQ_LEN ? i >= 2 : i % SEQ_LEN < 3;
  }
  struct eellm_batch batch = {tokens, targets, mask};
  eellm_model_submit_zero_grads(m);
  if (eellm_model_submit_forward_backward(m, &batch, NULL, 1.0f, err, errlen) != 0) return;
  Eellm__AdamW opt = EELLM__ADAM_W__INIT;
  eellm_model_submit_optimizer(m, &opt, 1, 0.0);
  eellm_model_wait(m);
  eellm_model_sync(m);
}

int main(int argc, char **argv) {
  char err[512] = "";
  if (argc != 2) return die("usage", "dp_mask OUT");
  if (eellm_launched_by_mpirun() && eellm_mpi_init(err, sizeof err) != 0) return die("MPI", err);
  if (eellm_runtime_start(err, sizeof err) != 0) return die("StarPU", err);
  Eellm__Model *spec = eellm_model_spec_load("tests/specs/pipe.txtpb", err, sizeof err);
  if (!spec) return die("spec", err);
  Eellm__Parallelism par = EELLM__PARALLELISM__INIT;
  par.dp = (uint32_t)eellm_nranks();
  eellm_model *m = eellm_model_create_parallel(spec, SEQUENCES, SEQ_LEN, &par, err, sizeof err);
  if (!m) return die("model", err);
  eellm_model_init(m, 7);
  step(m, err, sizeof err);
  int status = err[0] ? die("step", err) : 0;
  FILE *out = status == 0 && eellm_rank() == 0 ? fopen(argv[1], "w") : NULL;
  if (out) {
    write_result(m, out);
    status = fclose(out) != 0;
  } else if (status == 0 && eellm_rank() == 0) {
    status = die(argv[1], "cannot write");
  }
  eellm_model_destroy(m);
  eellm_model_spec_free(spec);
  eellm_runtime_stop();
  return status;
}
