/* eellm public API: load and validate specs, build a model's data handles,
 * submit a batch's forward and backward as StarPU tasks, read each exit's loss. */
#ifndef EELLM_H
#define EELLM_H

#include <stddef.h>
#include <stdint.h>

#include "model.pb-c.h"
#include "train.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- runtime ----------------------------------------------------------- */
/* Starts StarPU (scheduler lws unless STARPU_SCHED is set) with single-threaded
 * BLAS inside tasks. Returns 0, or -1 after printing why. */
int eellm_runtime_start(void);
void eellm_runtime_stop(void);

#ifdef __cplusplus
}
#endif
#endif
