/* Data handles reused across the steps of generation. Registering and
 * unregistering a handle costs more than a small task does, and a decoding
 * step of one token is made of small tasks: handles of each shape are kept and
 * handed out again at every step. */
#ifndef EELLM_RUNTIME_GEN_POOL_H
#define EELLM_RUNTIME_GEN_POOL_H

#include <starpu.h>

struct gen_pool;

struct gen_pool *gen_pool_new(void);
/* Unregisters every handle (waiting for their tasks) and frees the pool. */
void gen_pool_free(struct gen_pool *p);
/* Every handle may be handed out again: tasks submitted on it from now on come
 * after (StarPU orders them) those submitted before. */
void gen_pool_reset(struct gen_pool *p);
/* A float matrix [rows, cols], allocated by StarPU on first write, distinct
 * from every handle handed out since the last reset. Tasks write the handles'
 * content (eellm_insert_vector_set for inputs); StarPU orders them. */
starpu_data_handle_t gen_pool_matrix(struct gen_pool *p, size_t rows, size_t cols);
/* A vector of n elements of elemsize bytes, likewise. */
starpu_data_handle_t gen_pool_vector(struct gen_pool *p, size_t n, size_t elemsize);

#endif
