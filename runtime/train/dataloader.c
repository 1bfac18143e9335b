#include "runtime/train/dataloader.h"

#include "runtime/engine/splitmix.h"


static void copy_window(const struct eellm_loader *l, size_t start, int32_t *tokens,
                        int32_t *targets) {
  for (unsigned t = 0; t < l->seq_len; t++) {
    tokens[t] = l->tokens[start + t];
    targets[t] = l->tokens[start + t + 1];
  }
}

void eellm_loader_train(const struct eellm_loader *l, uint64_t step, unsigned micro,
                        int32_t *tokens, int32_t *targets) {
  size_t windows = l->n_tokens - l->seq_len; /* valid start positions */
  for (unsigned b = 0; b < l->batch; b++) {
    uint64_t key = eellm_splitmix64(eellm_splitmix64(eellm_splitmix64(l->seed) ^ step) ^ ((uint64_t)micro << 32 | b));
    copy_window(l, key % windows, tokens + (size_t)b * l->seq_len,
                targets + (size_t)b * l->seq_len);
  }
}

void eellm_loader_eval(const struct eellm_loader *l, unsigned index, unsigned count,
                       int32_t *tokens, int32_t *targets) {
  size_t windows = l->n_tokens - l->seq_len;
  size_t rows = (size_t)count * l->batch;
  for (unsigned b = 0; b < l->batch; b++) {
    size_t row = (size_t)index * l->batch + b;
    copy_window(l, windows * row / rows, tokens + (size_t)b * l->seq_len,
                targets + (size_t)b * l->seq_len);
  }
}
