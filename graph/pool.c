/* Activation handles reused by shape (pool.h). */
#include "graph/pool.h"

#include <stdio.h>
#include <stdlib.h>

#include "runtime/engine/mpi.h"

/* The handles of one shape, the first `used` of them handed out since the reset. */
struct shelf {
  size_t rows, cols, elemsize; /* a vector has rows 0 and cols elements */
  starpu_data_handle_t *h;
  size_t n, used;
};

struct eellm_pool {
  int node;
  struct shelf *shelves;
  size_t n, cap;
};

static void *grow(void *array, size_t n, size_t size) {
  void *p = realloc(array, n * size);
  if (!p) {
    fprintf(stderr, "eellm: out of memory for activation buffers\n");
    abort();
  }
  return p;
}

struct eellm_pool *eellm_pool_new(int node) {
  struct eellm_pool *p = calloc(1, sizeof *p);
  if (p) p->node = node;
  return p;
}

void eellm_pool_free(struct eellm_pool *p) {
  if (!p) return;
  for (size_t i = 0; i < p->n; i++) {
    struct shelf *s = &p->shelves[i];
    for (size_t j = 0; j < s->n; j++) starpu_data_unregister(s->h[j]);
    free(s->h);
  }
  free(p->shelves);
  free(p);
}

void eellm_pool_reset(struct eellm_pool *p) {
  for (size_t i = 0; i < p->n; i++) p->shelves[i].used = 0;
}

static struct shelf *shelf_for(struct eellm_pool *p, size_t rows, size_t cols, size_t elemsize) {
  for (size_t i = 0; i < p->n; i++) {
    struct shelf *s = &p->shelves[i];
    if (s->rows == rows && s->cols == cols && s->elemsize == elemsize) return s;
  }
  if (p->n == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 32;
    p->shelves = grow(p->shelves, p->cap, sizeof *p->shelves);
  }
  struct shelf *s = &p->shelves[p->n++];
  *s = (struct shelf){.rows = rows, .cols = cols, .elemsize = elemsize};
  return s;
}

/* The next free handle of shelf s, registered when the shelf has none left. */
static starpu_data_handle_t take(struct eellm_pool *p, struct shelf *s) {
  if (s->used < s->n) return s->h[s->used++];
  s->h = grow(s->h, s->n + 1, sizeof *s->h);
  if (s->rows)
    starpu_matrix_data_register(&s->h[s->n], -1, 0, s->cols, s->cols, s->rows, s->elemsize);
  else
    starpu_vector_data_register(&s->h[s->n], -1, 0, s->cols, s->elemsize);
  eellm_mpi_register(s->h[s->n], p->node);
  s->n++;
  return s->h[s->used++];
}

starpu_data_handle_t eellm_pool_matrix(struct eellm_pool *p, size_t rows, size_t cols) {
  return take(p, shelf_for(p, rows, cols, sizeof(float)));
}

starpu_data_handle_t eellm_pool_vector(struct eellm_pool *p, size_t n, size_t elemsize) {
  return take(p, shelf_for(p, 0, n, elemsize));
}
