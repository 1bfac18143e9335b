/* Plain C types shared by the codelet wrappers (codelets.h) and the kernels
 * (cpu/kernels.h): no StarPU in here, so a kernel source needs none either. */
#ifndef EELLM_CODELET_TYPES_H
#define EELLM_CODELET_TYPES_H

#include <stdint.h>

enum eellm_norm_kind { EELLM_LAYERNORM = 0, EELLM_RMSNORM = 1 };

enum eellm_activation { EELLM_GELU = 0, EELLM_SWIGLU = 1 };

/* A transformer layer's tensors, in the order of struct eellm_layer_params
 * (graph/model.h): norms' gains and biases, products' weights and biases. */
enum eellm_layer_tensor {
  EELLM_LN1_W,
  EELLM_LN1_B,
  EELLM_QKV_W,
  EELLM_QKV_B,
  EELLM_O_W,
  EELLM_O_B,
  EELLM_LN2_W,
  EELLM_LN2_B,
  EELLM_FC_W,
  EELLM_FC_B,
  EELLM_PROJ_W,
  EELLM_PROJ_B,
  EELLM_LAYER_TENSORS
};

/* What a layer's tensor sizes do not say about it. */
struct eellm_layer_kind {
  unsigned heads;
  enum eellm_norm_kind norm;
  float norm_eps;
  enum eellm_activation act;
  int rope;
  float rope_theta;
};

struct eellm_adamw_step {
  float lr, beta1, beta2, eps, weight_decay;
  unsigned step; /* 1-based, for bias correction */
};

/* An AdamW step's constants (eellm_cpu_adamw_consts), computed in double on the
 * host as PyTorch does in Python, for the CPU and CUDA kernels alike. */
struct eellm_adamw_consts {
  float beta1, beta2, eps, decay, step_size, bias2_sqrt;
};

/* One row's outcome of eellm_insert_next_token (see codelets.h). */
/* raw_logprob and raw_maxprob are of softmax(logits) as they come from the head,
 * before exit temperature or sampling: log_softmax(logits)[token] and
 * max softmax(logits) (EE-LLM's logprobs and print_max_prob). */
struct eellm_token_choice {
  int32_t token;
  float confidence, logprob, raw_logprob, raw_maxprob;
};

struct eellm_sampling {
  float exit_temperature;
  int entropy_rule;
  float temperature; /* 0: greedy */
  unsigned top_k;
  float top_p;
};

/* One row's own limits in eellm_insert_next_token (optional): its top_p, in place
 * of the sampling's, and a token it may not give (-1: none), whose logit counts as
 * -1e10 (EE-LLM's ban) in everything the row's choice reports. */
struct eellm_row_limit {
  float top_p;
  int32_t banned;
};

#endif
