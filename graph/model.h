/* The model as StarPU data: parameters (one allocation carved into named
 * tensors), their gradients and AdamW moments, each tensor a data handle. */
#ifndef EELLM_GRAPH_MODEL_H
#define EELLM_GRAPH_MODEL_H

#include <starpu.h>

#include "eellm.h"
#include "graph/placement.h"

#define EELLM_NAME_MAX 96

/* How tensor parallelism splits a tensor (Megatron-LM): its rows (a
 * row-parallel product's inputs [in, out], the vocabulary of wte and lm_head),
 * its columns in `groups` equal runs split alike (a column-parallel product's
 * outputs: c_attn's q | k | v, SwiGLU's gate | up, and their biases), or not
 * at all (norms, positions, the biases of row-parallel products). */
enum eellm_split { EELLM_SPLIT_NONE, EELLM_SPLIT_ROWS, EELLM_SPLIT_COLS };

/* This process's part of a tensor: rows [lo, lo + rows) (ROWS), columns
 * [lo, lo + cols / groups) of each run (COLS), or the whole (NONE). Its
 * parameter, gradient and moments are held contiguous, [rows, cols]. */
struct eellm_part {
  enum eellm_split split;
  unsigned groups;
  size_t rows, cols, numel, lo;
  size_t offset; /* in floats, into the model's part blocks (split tensors only) */
};

struct eellm_tensor {
  char name[EELLM_NAME_MAX];
  size_t rows, cols;  /* a vector has rows == 0 */
  size_t offset;      /* in floats, into the model's parameter block */
  size_t numel;
  int decay;          /* AdamW weight decay applies (matrices) */
  int frozen;         /* no gradient, no update (EE-Tuning's backbone) */
  unsigned owner;     /* pipeline stage that holds and updates it (placement.h gives its rank) */
  int updater;        /* ZeRO-1: the data index whose replica keeps its moments and updates
                         it; -1: every replica */
  struct eellm_part part; /* what this process holds of it; the handles are over the part */
  starpu_data_handle_t param, grad, m, v;
};

/* Columns of c_fc: d_ffn, or 2 * d_ffn for SwiGLU (gate and up side by side). */
unsigned eellm_fc_out(const Eellm__Model *spec);

/* Indices into the tensor table; -1 where the spec has no such tensor. */
struct eellm_layer_params {
  int ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc_w, fc_b, proj_w, proj_b;
};

struct eellm_exit_params {
  unsigned layer;            /* 1-based layer whose output the exit reads */
  Eellm__Exit__Structure structure;
  struct eellm_layer_params block; /* BLOCK: a whole layer; MLP: ln2, fc, proj only (ln2:
                                      the layer's own for mlp_input LAYER_NORM_OUTPUT) */
  int lnf_w, lnf_b;          /* NORM, MLP, BLOCK */
  int head_w;                /* [V, D], the exit's own or the final head's */
  float temperature;
  int dynamic_weight;        /* EE-LLM's dynamic exit-loss weight (model.proto) */
};

/* The gradient a stage accumulates for a tensor another stage owns (a tied
 * output head used on several stages); summed into the owner's gradient
 * before the optimizer step. */
struct eellm_shadow {
  int tensor;
  unsigned stage;
  starpu_data_handle_t grad;
};

/* What the tasks of this process see of the model under tensor parallelism:
 * its share of the heads, of the MLP's hidden units and of the vocabulary
 * (the whole model with tp 1). */
struct eellm_tp_share {
  unsigned heads;          /* attention heads */
  size_t att;              /* heads * head size: columns of the attention output; qkv has 3 att */
  size_t ffn, fc;          /* hidden units, and columns of c_fc (2 ffn for SwiGLU) */
  size_t vocab_lo, vocab;  /* first vocabulary row held, and how many: the logits' columns */
  int first;               /* tensor index 0: adds the replicated bias and residual of each
                              row-parallel product, once */
};

struct eellm_model {
  Eellm__Model *spec;        /* owned copy */
  unsigned micro_batch;      /* sequences per micro-batch */
  unsigned seq_len;          /* tokens per sequence */
  unsigned d_ffn;            /* resolved ffn_size */
  unsigned fc_out;           /* columns of c_fc: d_ffn, or 2 * d_ffn for SwiGLU */
  size_t n_tensors;
  struct eellm_tensor *tensors;
  float *params, *grads, *adam_m, *adam_v; /* one block each, n_params floats */
  size_t n_params;
  int wte, wpe, lnf_w, lnf_b, head_w;
  struct eellm_layer_params *layers;       /* n_layers */
  struct eellm_exit_params *exits;         /* spec->n_exits, in spec order */
  unsigned *exit_order;                    /* exits sorted by layer */
  struct eellm_step *step;                 /* micro-batches submitted since the last wait */
  int backbone_frozen;
  struct eellm_placement place;            /* stages of layers and exits, their ranks */
  struct eellm_shadow *shadows;
  size_t n_shadows;
  char tokenizer[16];                      /* "byte", "gpt2", or "" when unknown */
  double *sumsq;                           /* per tensor: sum of squared gradients */
  starpu_data_handle_t *sumsq_h;
  float clip[2];                           /* global gradient norm, clip factor */
  starpu_data_handle_t clip_h;
  MPI_Comm dp_comm;                        /* data-parallel group; MPI_COMM_NULL: dp 1 */
  MPI_Comm tp_comm;                        /* tensor-parallel group; MPI_COMM_NULL: tp 1 */
  struct eellm_tp_share share;
  float *part_params, *part_grads, *part_m, *part_v; /* split tensors' parts, n_part floats each */
  size_t n_part;
  char *seq_bytes;                         /* per stage: its sequencing handle's data (dp or tp) */
  starpu_data_handle_t *seq_h;             /* per stage: orders collectives (collective.h) */
};

/* Tensor naming follows GPT-2 / Hugging Face (`transformer.h.{i}.attn.c_attn.weight`, ...);
 * exits are `exits.{k}.…` with k the exit's index in the spec. */
int eellm_model_find(const struct eellm_model *m, const char *name);
/* Whether this process holds tensor i (always, without MPI). */
int eellm_model_owns(const struct eellm_model *m, size_t i);
/* Whether this process's replica updates tensor i (all do, but under ZeRO-1). */
int eellm_model_replica_updates(const struct eellm_model *m, size_t i);
/* Whether this process holds tensor i's AdamW moments and updates it (its
 * stage's rank, of the replica that ZeRO-1 gives the tensor to). */
int eellm_model_updates(const struct eellm_model *m, size_t i);
/* Bytes of AdamW moments this process keeps. */
size_t eellm_model_moment_bytes(const struct eellm_model *m);
/* The gradient stage `stage` accumulates tensor i's contributions into. */
starpu_data_handle_t eellm_model_grad_on(const struct eellm_model *m, int i, unsigned stage);
/* Which copy of a tensor: its weights, gradient or AdamW moments. */
enum eellm_copy { EELLM_COPY_PARAM, EELLM_COPY_GRAD, EELLM_COPY_M, EELLM_COPY_V };
/* The handle of copy `c` of tensor i, and the full-layout block it lives in. */
starpu_data_handle_t eellm_model_copy_handle(const struct eellm_model *m, size_t i,
                                             enum eellm_copy c);
float *eellm_model_copy_block(const struct eellm_model *m, enum eellm_copy c);
/* The memory of this process's part of copy c of tensor i: [part.rows, part.cols]. */
float *eellm_model_part(const struct eellm_model *m, size_t i, enum eellm_copy c);
/* This process's part of copy c of tensor i (it must hold the tensor) = the matching
 * part of `full`, the tensor in its full layout (acquires the handle). */
void eellm_model_put_part(struct eellm_model *m, size_t i, enum eellm_copy c, const float *full);
/* Copy c of tensor i in its full layout in the model's block on rank 0, from the
 * ranks that hold its parts in replica `data` (collective over those ranks and
 * rank 0, called in the same order by all). */
void eellm_model_gather_copy(struct eellm_model *m, size_t i, enum eellm_copy c,
                             unsigned data);
/* 0 when every weight this process holds is finite; else -1 with "PATH: tensor
 * 'NAME' has a non-finite value (nan) at index I" in err (checkpoint.c). */
int eellm_model_check_finite(struct eellm_model *m, const char *path, char *err, size_t errlen);

#endif
