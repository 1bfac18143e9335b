/* eellm public API, the core: start the runtime, load, validate and write
 * specs, build a model's data handles, submit a batch's forward and backward
 * as StarPU tasks, read each exit's loss, save and load checkpoints.
 *
 * The rest of the installed API is in eellm/: train.h (the training loop and
 * loss plots), generate.h (early-exit generation), eval.h (evaluation,
 * threshold sweeps and calibration), tokenizer.h, tokens.h
 * (token files), trace.h (task traces and their figures), outfile.h (atomic
 * output files). Error convention and visibility: eellm/api.h. */
#ifndef EELLM_H
#define EELLM_H

#include <stddef.h>
#include <stdint.h>

#include "eellm/api.h"
#include "model.pb-c.h"
#include "train.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- runtime ----------------------------------------------------------- */
/* OpenBLAS picks its kernels from the CPU's model number as it loads and falls back to
 * SSE3 ones on models it does not know (Debian 12's on an Emerald Rapids: a fifth of the
 * speed). eellm_blas_core_for_cpu names the OpenBLAS core this CPU should run instead
 * ("SkylakeX" for AVX-512, "Haswell" for AVX2 and FMA), or NULL where OpenBLAS already
 * runs vector kernels or OPENBLAS_CORETYPE is set. eellm_blas_fit_cpu, first thing in
 * main, starts the program again (the same executable and argv) with OPENBLAS_CORETYPE
 * set to it; it returns where there is nothing to change or the exec failed. */
EELLM_API const char *eellm_blas_core_for_cpu(void);
EELLM_API void eellm_blas_fit_cpu(char **argv);
/* Which build of eellm's own CPU kernels runs on this CPU ("x86-64-v4 (AVX-512)",
 * "x86-64-v3 (AVX2, FMA)", "x86-64 (SSE2)", "portable C"): each is compiled for the first
 * three and picked as the library loads. Attention's register tiles and the heads' few-row
 * products need the first; elsewhere those run on OpenBLAS. */
EELLM_API const char *eellm_cpu_kernels(void);
/* Starts StarPU (scheduler lws unless STARPU_SCHED is set) with single-threaded
 * BLAS inside tasks; StarPU-MPI when eellm_mpi_init ran first. Returns 0, or
 * -1 with why in err. Stopping also finalises MPI. */
EELLM_API int eellm_runtime_start(char *err, size_t errlen);
EELLM_API void eellm_runtime_stop(void);
/* Brings MPI up (MPI_THREAD_MULTIPLE) for a run of one rank per pipeline
 * stage of each data-parallel replica; then eellm_runtime_start starts
 * StarPU-MPI. 0, or -1 with err. */
EELLM_API int eellm_mpi_init(char *err, size_t errlen);
/* Whether the process was started by mpirun (so eellm_mpi_init is wanted). */
EELLM_API int eellm_launched_by_mpirun(void);
/* This process's rank and the number of ranks (0 and 1 without MPI). */
EELLM_API int eellm_rank(void);
EELLM_API int eellm_nranks(void);
/* Host-side reductions over all ranks (collective), for figures outside the
 * task graph: loss reports, stop flags, benchmarks. Identities without MPI. */
EELLM_API void eellm_mpi_sum(double *values, int n);
EELLM_API int eellm_mpi_max(int value);
/* n bytes at buf go from rank 0 to every rank (collective; a rank waiting for
 * them sleeps between polls rather than spin: a server's followers wait long). */
EELLM_API void eellm_mpi_bcast(void *buf, size_t n);

/* ---- specs --------------------------------------------------------------- */
/* Limits the spec checks enforce (schemas/model.proto and train.proto document
 * them): far above any model one machine trains, low enough that every size
 * and product of spec values fits its type and every check runs in time and
 * memory linear in the spec. */
#define EELLM_MAX_VOCAB 65536u             /* vocab_size: token files store uint16 */
#define EELLM_MAX_CONTEXT 1048576u         /* context_length: 2^20 tokens */
#define EELLM_MAX_D_MODEL 65536u           /* d_model */
#define EELLM_MAX_FFN_SIZE 1048576u        /* ffn_size: 2^20 */
#define EELLM_MAX_LAYERS 65536u            /* n_layers (and so exits, one per layer) */
#define EELLM_MAX_PARAMS 1099511627776.0   /* 2^40 parameters, exits included: 16 TiB of
                                              weights, gradients and AdamW moments */
#define EELLM_MAX_STAGES 1024u             /* parallelism.pp and `eellm model --pp` */
#define EELLM_MAX_STEP_TOKENS 1073741824u  /* 2^30 tokens in a step's batch or a validation pass */

/* Reads a model spec in protobuf text format (.txtpb) or binary (.pb) and
 * validates it. Returns NULL with a one-line error in err ("FILE:LINE:COL: field
 * 'exits[1].layer': ..."). Free with eellm_model_spec_free. */
EELLM_API Eellm__Model *eellm_model_spec_load(const char *path, char *err, size_t errlen);
/* Validates an in-memory model spec; file names the source in messages. 0 or -1. */
EELLM_API int eellm_model_spec_check(const Eellm__Model *spec, const char *file, char *err,
                                     size_t errlen);
/* Reads a training spec and validates it against the model. Free with
 * eellm_train_spec_free. */
EELLM_API Eellm__Train *eellm_train_spec_load(const char *path, const Eellm__Model *model,
                                              char *err, size_t errlen);
/* Free what the loaders (and eellm_checkpoint_spec) return; NULL is allowed. */
EELLM_API void eellm_model_spec_free(Eellm__Model *spec);
EELLM_API void eellm_train_spec_free(Eellm__Train *spec);
/* Writes a spec (an Eellm__Model or Eellm__Train, as &spec->base) in binary
 * (protobuf_c_message_pack) or text format, the text with the `# proto-file:` /
 * `# proto-message:` header; atomically (temp file in the same directory, fsync,
 * rename). 0, or -1 with err. */
EELLM_API int eellm_spec_write_binary(const char *path, const ProtobufCMessage *msg, char *err,
                                      size_t errlen);
EELLM_API int eellm_spec_write_text(const char *path, const ProtobufCMessage *msg, char *err,
                                    size_t errlen);
/* Hidden width of the MLPs (ffn_size, or 4 * d_model when unset). */
EELLM_API unsigned eellm_model_spec_ffn_size(const Eellm__Model *spec);

/* ---- accounting ---------------------------------------------------------- */
struct eellm_model_spec_costs {
  double params_embedding;   /* wte + wpe */
  double params_layers;      /* all transformer layers */
  double params_final_head;  /* final norm + untied lm_head */
  double params_exits;       /* all exits' own parameters */
  double params_total;
  double flops_fwd_backbone; /* per token, forward, final head included, exits excluded */
  double flops_fwd_exits;    /* per token, forward, all exits */
};
/* Parameter and FLOP counts (per token at the full context length, causal attention). */
EELLM_API void eellm_model_spec_costs(const Eellm__Model *spec, struct eellm_model_spec_costs *out);
/* Parameters of one layer, and of exit k (its own tensors only). */
EELLM_API double eellm_model_spec_layer_params(const Eellm__Model *spec);
EELLM_API double eellm_model_spec_exit_params(const Eellm__Model *spec, unsigned k);
/* Forward FLOPs per token of one layer and of exit k at sequence length seq_len. */
EELLM_API double eellm_model_spec_layer_flops(const Eellm__Model *spec, unsigned seq_len);
EELLM_API double eellm_model_spec_exit_flops(const Eellm__Model *spec, unsigned k,
                                             unsigned seq_len);
/* Splits the layers into pp stages: stage_layers[s] layers on stage s. Uses the
 * explicit split when given (n_given > 0), else balances forward FLOPs, exit heads
 * (on the stage their placement puts them) and the embedding / final head included:
 * the contiguous split whose most expensive stage is cheapest, ties going to the
 * longest last stage, then recursively the same for the stages before it. Time
 * O(n_layers + n_exits + pp^2 log n_layers) for usual costs (at most 64 times the
 * last term), memory O(n_layers). Returns 0, or -1 (stage_layers untouched) when
 * pp is outside 1..n_layers or above EELLM_MAX_STAGES, n_layers is above
 * EELLM_MAX_LAYERS, or memory runs out. */
EELLM_API int eellm_model_spec_stage_split(const Eellm__Model *spec, unsigned pp,
                                            const uint32_t *given, size_t n_given,
                                            unsigned *stage_layers);

/* ---- model --------------------------------------------------------------- */
typedef struct eellm_model eellm_model;

/* Builds the model's parameter, gradient and optimizer-state data handles for
 * micro-batches of `micro_batch` sequences of `seq_len` tokens. */
EELLM_API eellm_model *eellm_model_create(const Eellm__Model *spec, unsigned micro_batch,
                                          unsigned seq_len, char *err, size_t errlen);
/* The same, split into pp pipeline stages (stage s on MPI rank s under
 * eellm_mpi_init; pp must then equal the rank count): stage_layers gives
 * each stage's layer count, or NULL for a split balanced by FLOPs. */
EELLM_API eellm_model *eellm_model_create_pipelined(const Eellm__Model *spec, unsigned micro_batch,
                                                    unsigned seq_len, unsigned pp,
                                                    const uint32_t *stage_layers,
                                                    size_t n_stage_layers, char *err,
                                                    size_t errlen);
/* The same for a training spec's parallelism (NULL: one process): pp stages,
 * dp data-parallel replicas, each taking micro_batch / dp of every
 * micro-batch's sequences (callers still pass whole micro-batches), and
 * zero_stage 1 sharding the AdamW moments among the replicas, and tp
 * tensor-parallel ranks per stage, each holding its part of every layer and
 * head (tp must divide n_heads and the MLP's hidden units; tensor data and
 * shapes below stay the full tensors'). Under MPI the rank count must be
 * pp x tp x dp. */
EELLM_API eellm_model *eellm_model_create_parallel(const Eellm__Model *spec, unsigned micro_batch,
                                                   unsigned seq_len, const Eellm__Parallelism *par,
                                                   char *err, size_t errlen);
/* Where the model runs: one line per rank (stage and its layers, replica,
 * tensor index, AdamW moment bytes kept) into buf, truncated to n bytes.
 * Collective under MPI: every rank calls it. */
EELLM_API void eellm_model_describe_layout(eellm_model *m, char *buf, size_t n);
EELLM_API void eellm_model_destroy(eellm_model *m);
/* GPT-2 initialisation: weights normal(0, init_std), residual projections scaled
 * by 1/sqrt(2 n_layers), norm gains 1, biases 0; deterministic in seed. */
EELLM_API void eellm_model_init(eellm_model *m, uint64_t seed);
EELLM_API const Eellm__Model *eellm_model_spec(const eellm_model *m);
/* The tokenizer the model was trained with ("byte", "gpt2"; NULL if unknown),
 * kept in checkpoints' metadata. */
EELLM_API void eellm_model_set_tokenizer(eellm_model *m, const char *name);
EELLM_API const char *eellm_model_tokenizer(const eellm_model *m);
EELLM_API unsigned eellm_model_micro_batch(const eellm_model *m);
EELLM_API unsigned eellm_model_seq_len(const eellm_model *m);

/* Named tensors (GPT-2 / Hugging Face names). Host pointers are valid after
 * eellm_model_sync. rows == 0 for vectors. */
EELLM_API size_t eellm_model_n_tensors(const eellm_model *m);
EELLM_API const char *eellm_model_tensor_name(const eellm_model *m, size_t i);
EELLM_API void eellm_model_tensor_shape(const eellm_model *m, size_t i, size_t *rows, size_t *cols);
EELLM_API float *eellm_model_tensor_data(eellm_model *m, size_t i);
EELLM_API float *eellm_model_tensor_grad(eellm_model *m, size_t i);
EELLM_API size_t eellm_model_n_params(const eellm_model *m);
/* Waits for submitted tasks and makes host copies of parameters and gradients
 * current (under MPI: on rank 0, for every stage's tensors; collective). */
EELLM_API void eellm_model_sync(eellm_model *m);

/* Checkpoints: safetensors with the binary spec in __metadata__, written atomically.
 * Loading checks every tensor's name, dtype and shape against the model's spec. */
EELLM_API int eellm_model_save(eellm_model *m, const char *path, char *err, size_t errlen);
EELLM_API int eellm_model_load(eellm_model *m, const char *path, char *err, size_t errlen);
/* Training checkpoints add the AdamW moments (optimizer.m.<name>, optimizer.v.<name>)
 * and the step and seed; state NULL saves or loads weights alone. */
struct eellm_train_state {
  unsigned step;  /* optimizer steps done */
  uint64_t seed;
};
EELLM_API int eellm_model_save_checkpoint(eellm_model *m, const char *path,
                                          const struct eellm_train_state *state, char *err,
                                          size_t errlen);
EELLM_API int eellm_model_load_checkpoint(eellm_model *m, const char *path,
                                          struct eellm_train_state *state, char *err,
                                          size_t errlen);
/* The model spec stored in a checkpoint, validated. */
EELLM_API Eellm__Model *eellm_checkpoint_spec(const char *path, char *err, size_t errlen);
/* Names the first field where two messages of one type differ ("exits[1].layer")
 * in `field`; returns 0 when they are equal. */
EELLM_API int eellm_spec_diff(const ProtobufCMessage *a, const ProtobufCMessage *b, char *field,
                              size_t n);

/* ---- forward and backward ---------------------------------------------- */
/* Bad token ids are reported (-1 and err). Submission itself aborts the
 * process when StarPU refuses a task or memory runs out for one: not bad
 * input, and nothing a caller could recover from mid-graph. */
/* One micro-batch: micro_batch * seq_len token ids, next-token targets and an
 * optional loss mask (NULL: every position counts). Arrays must stay valid
 * until eellm_model_wait returns. Under data parallelism every rank passes the
 * whole micro-batch; its replica computes its own share of the sequences, and
 * the optimizer step sums the replicas' gradients. */
struct eellm_batch {
  const int32_t *tokens;
  const int32_t *targets;
  const float *mask;
};
/* The slices each micro-batch runs as, a chain of tasks each: one per CPU worker
 * (at most one per sequence) with one pipeline stage and no tensor parallelism,
 * else 1 (graph/placement.h). */
EELLM_API unsigned eellm_model_slices(const eellm_model *m);
/* Number of exits including the final head (last); exit k < n-1 is spec exit k. */
EELLM_API unsigned eellm_model_n_exits(const eellm_model *m);
/* 1-based layer whose output exit k reads (n_layers for the final head). */
EELLM_API unsigned eellm_model_exit_layer(const eellm_model *m, unsigned k);
/* Submits one step's gradient zeroing (call before the step's first micro-batch). */
EELLM_API void eellm_model_submit_zero_grads(eellm_model *m);
/* Submits the forward and backward tasks of one micro-batch. Gradients of
 * sum_k weight_k * CE_k scaled by grad_scale accumulate into the model's
 * gradients; exit_weights has eellm_model_n_exits entries (NULL: the spec's loss
 * weights, final head 1). Returns 0, or -1 on bad token ids with err set. */
EELLM_API int eellm_model_submit_forward_backward(eellm_model *m, const struct eellm_batch *batch,
                                                  const float *exit_weights, float grad_scale,
                                                  char *err, size_t errlen);
/* Submits the forward tasks of one micro-batch and its losses, no gradient
 * (validation). */
EELLM_API int eellm_model_submit_forward(eellm_model *m, const struct eellm_batch *batch, char *err,
                                         size_t errlen);
/* Waits for every submitted task; afterwards eellm_model_exit_loss gives each exit's
 * mean cross-entropy per token over the micro-batches submitted since the previous wait. */
EELLM_API void eellm_model_wait(eellm_model *m);
EELLM_API double eellm_model_exit_loss(const eellm_model *m, unsigned k);
/* Copies exit k's logits [micro_batch * seq_len, vocab_size] (before the exit's
 * temperature) of the latest micro-batch submitted before the last eellm_model_wait
 * into out. Returns 0, or -1 when there is none (or under MPI). */
EELLM_API int eellm_model_exit_logits(eellm_model *m, unsigned k, float *out);

/* ---- optimizer and schedules ------------------------------------------- */
/* Learning rate at step (1-based) under the training spec's schedule. */
EELLM_API double eellm_train_spec_lr_at(const Eellm__Train *train, unsigned step);
/* Loss weight of exit k (spec order) at step, following its schedule. */
EELLM_API double eellm_exit_spec_weight_at(const Eellm__Exit *exit, unsigned step);
/* Submits the global-norm clipping and one AdamW task per trainable tensor for
 * optimizer step `step` (1-based) at learning rate lr; call after the step's
 * micro-batches. The gradient norm is read with eellm_model_grad_norm after a wait.
 * A gradient norm that is not finite (NaN, inf) skips the step inside the
 * tasks: no parameter or moment changes. */
EELLM_API void eellm_model_submit_optimizer(eellm_model *m, const Eellm__AdamW *opt, unsigned step,
                                            double lr);
EELLM_API double eellm_model_grad_norm(const eellm_model *m);
/* Freezes every tensor that is not part of an exit (EE-Tuning): no gradient,
 * no update. */
EELLM_API void eellm_model_freeze_backbone(eellm_model *m);

#ifdef __cplusplus
}
#endif
#endif
