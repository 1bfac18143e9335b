/* Batches from a token stream: training windows at pseudo-random offsets that
 * depend only on (seed, step, micro-batch, row), so a resumed run reads
 * exactly what an uninterrupted one would; validation windows evenly spaced. */
#ifndef EELLM_RUNTIME_DATALOADER_H
#define EELLM_RUNTIME_DATALOADER_H

#include <stddef.h>
#include <stdint.h>

struct eellm_loader {
  const uint16_t *tokens;
  size_t n_tokens;      /* at least seq_len + 1 */
  uint64_t seed;
  unsigned batch, seq_len;
};

/* tokens and targets [batch * seq_len]: row b is a window of the stream and its
 * continuation shifted by one token. */
void eellm_loader_train(const struct eellm_loader *l, uint64_t step, unsigned micro,
                        int32_t *tokens, int32_t *targets);
/* Validation batch `index` of `count`: windows spread evenly over the stream. */
void eellm_loader_eval(const struct eellm_loader *l, unsigned index, unsigned count,
                       int32_t *tokens, int32_t *targets);

#endif
