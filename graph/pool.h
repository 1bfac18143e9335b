/* Activation handles reused from one use of a pool to the next. Registering
 * and unregistering a handle costs more than a small task does, and a pool's
 * handles bound the memory its users hold: training keeps one pool per
 * pipeline stage and micro-batch slot (graph/train_step.c), generation two
 * that its steps alternate between (graph/gen_step.c). */
#ifndef EELLM_GRAPH_POOL_H
#define EELLM_GRAPH_POOL_H

#include <starpu.h>

struct eellm_pool;

/* A pool whose handles belong to MPI rank `node` (no MPI: 0). */
struct eellm_pool *eellm_pool_new(int node);
/* Unregisters every handle (waiting for their tasks) and frees the pool. */
void eellm_pool_free(struct eellm_pool *p);
/* Every handle may be handed out again: tasks submitted on it from now on come
 * after (StarPU orders them) those submitted before. */
void eellm_pool_reset(struct eellm_pool *p);
/* A float matrix [rows, cols], allocated by StarPU on first write, distinct
 * from every handle handed out since the last reset: the k-th request of a
 * shape since the reset gets that shape's k-th handle. Tasks write the
 * handles' content (eellm_insert_vector_set for inputs); StarPU orders them. */
starpu_data_handle_t eellm_pool_matrix(struct eellm_pool *p, size_t rows, size_t cols);
/* A vector of n elements of elemsize bytes, likewise. */
starpu_data_handle_t eellm_pool_vector(struct eellm_pool *p, size_t n, size_t elemsize);

#endif
