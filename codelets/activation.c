/* MLP activations, forward and backward: GELU (tanh approximation, as
 * torch.nn.functional.gelu(x, approximate='tanh')) and SwiGLU (silu(gate) * up). */
#include <math.h>

#include "codelets.h"

struct activation_fwd_args {
  enum eellm_activation act;
};

struct activation_bwd_args {
  enum eellm_activation act;
  int beta_dx;
};

#define GELU_BETA 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* 0.5 (1 + tanh(u)) = sigmoid(2u): one expf instead of the much slower tanhf. */
static float gelu(float x) {
  return x * sigmoid(2.0f * GELU_BETA * (x + GELU_KAPPA * x * x * x));
}

/* With s = sigmoid(2u): d/dx [x s] = s + x * 2 s (1 - s) * du/dx. */
static float gelu_grad(float x) {
  float s = sigmoid(2.0f * GELU_BETA * (x + GELU_KAPPA * x * x * x));
  float dinner = GELU_BETA * (1.0f + 3.0f * GELU_KAPPA * x * x);
  return s + 2.0f * x * s * (1.0f - s) * dinner;
}

/* Writes or adds v: with beta_dx == 0 the buffer may hold garbage (mode W), even NaN. */
static void store(float *dst, float v, int beta_dx) { *dst = beta_dx ? *dst + v : v; }

/* GELU: h [N, F] -> a [N, F]; SwiGLU: h [N, 2F] = gate | up -> a [N, F]. */
static void activation_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct activation_fwd_args *args = cl_arg;
  const float *h = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t ld_h = STARPU_MATRIX_GET_LD(buffers[0]);
  float *a = (float *)STARPU_MATRIX_GET_PTR(buffers[1]);
  size_t ld_a = STARPU_MATRIX_GET_LD(buffers[1]);
  size_t n_rows = STARPU_MATRIX_GET_NY(buffers[1]);
  size_t width = STARPU_MATRIX_GET_NX(buffers[1]);

  for (size_t n = 0; n < n_rows; n++) {
    const float *h_row = h + n * ld_h;
    float *a_row = a + n * ld_a;
    if (args->act == EELLM_GELU) {
      for (size_t f = 0; f < width; f++) a_row[f] = gelu(h_row[f]);
    } else {
      const float *gate = h_row, *up = h_row + width;
      for (size_t f = 0; f < width; f++) a_row[f] = gate[f] * sigmoid(gate[f]) * up[f];
    }
  }
}

/* GELU: h [N, F], da [N, F] -> dh [N, F];
 * SwiGLU: h [N, 2F], da [N, F] -> dh [N, 2F] = dgate | dup. dh honours beta_dx. */
static void activation_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct activation_bwd_args *args = cl_arg;
  const float *h = (const float *)STARPU_MATRIX_GET_PTR(buffers[0]);
  size_t ld_h = STARPU_MATRIX_GET_LD(buffers[0]);
  const float *da = (const float *)STARPU_MATRIX_GET_PTR(buffers[1]);
  size_t ld_da = STARPU_MATRIX_GET_LD(buffers[1]);
  size_t n_rows = STARPU_MATRIX_GET_NY(buffers[1]);
  size_t width = STARPU_MATRIX_GET_NX(buffers[1]);
  float *dh = (float *)STARPU_MATRIX_GET_PTR(buffers[2]);
  size_t ld_dh = STARPU_MATRIX_GET_LD(buffers[2]);

  for (size_t n = 0; n < n_rows; n++) {
    const float *h_row = h + n * ld_h, *da_row = da + n * ld_da;
    float *dh_row = dh + n * ld_dh;
    if (args->act == EELLM_GELU) {
      for (size_t f = 0; f < width; f++)
        store(&dh_row[f], da_row[f] * gelu_grad(h_row[f]), args->beta_dx);
    } else {
      const float *gate = h_row, *up = h_row + width;
      float *dgate = dh_row, *dup = dh_row + width;
      for (size_t f = 0; f < width; f++) {
        float s = sigmoid(gate[f]);
        float silu = gate[f] * s;
        store(&dgate[f], da_row[f] * up[f] * s * (1.0f + gate[f] * (1.0f - s)), args->beta_dx);
        store(&dup[f], da_row[f] * silu, args->beta_dx);
      }
    }
  }
}

static struct starpu_perfmodel activation_fwd_model = {.type = STARPU_HISTORY_BASED,
                                                       .symbol = "eellm_activation_fwd"};
static struct starpu_perfmodel activation_bwd_model = {.type = STARPU_HISTORY_BASED,
                                                       .symbol = "eellm_activation_bwd"};

static struct starpu_codelet activation_fwd_cl = {.cpu_funcs = {activation_fwd_cpu},
                                                  .cpu_funcs_name = {"activation_fwd_cpu"},
                                                  .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                                  .model = &activation_fwd_model,
                                                  .name = "activation_fwd"};
static struct starpu_codelet activation_bwd_cl = {.cpu_funcs = {activation_bwd_cpu},
                                                  .cpu_funcs_name = {"activation_bwd_cpu"},
                                                  .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                                  .model = &activation_bwd_model,
                                                  .name = "activation_bwd"};

void eellm_insert_activation_fwd(starpu_data_handle_t h, starpu_data_handle_t a,
                                 enum eellm_activation act, const struct eellm_task_info *info) {
  struct activation_fwd_args args = {.act = act};
  struct starpu_data_descr buffers[] = {{h, STARPU_R}, {a, STARPU_W}};
  eellm_submit(&activation_fwd_cl, buffers, 2, &args, sizeof args, info);
}

void eellm_insert_activation_bwd(starpu_data_handle_t h, starpu_data_handle_t da,
                                 starpu_data_handle_t dh, enum eellm_activation act, int beta_dx,
                                 const struct eellm_task_info *info) {
  struct activation_bwd_args args = {.act = act, .beta_dx = beta_dx};
  struct starpu_data_descr buffers[] = {
      {h, STARPU_R}, {da, STARPU_R}, {dh, beta_dx ? STARPU_RW : STARPU_W}};
  eellm_submit(&activation_bwd_cl, buffers, 3, &args, sizeof args, info);
}
