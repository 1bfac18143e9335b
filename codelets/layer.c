/* StarPU glue of a whole layer on cached-attention rows as one task (kernel in
 * cpu/layer.c): at batch 1 a layer's eight tasks each take microseconds, and
 * StarPU's dependency hand-over between them cost more than their work.
 *
 * With two CPU workers a second task, layer_cached_helper, runs beside it on the
 * other worker and takes a share of the layer's steps (cpu/layer.c: each product
 * in two column halves), so that the chain of decoding uses both cores. The two
 * meet in a `struct gang`: a step's parts are claimed one at a time, and past
 * its start a task waits only for parts the other has claimed and is running.
 * layer_cached, which holds the data, never waits for its helper to start and
 * claims whatever is left, so it finishes alone when the helper comes late (its
 * worker busy); the helper waits at most HELPER_WAIT_US for layer_cached to
 * start and, finding nothing to claim, returns. The helper declares only x, to
 * become ready with the layer: it writes layer_cached's buffers only while
 * layer_cached runs, which returns once every claimed part is done, so StarPU's
 * accounting of the data holds. The bits are the single task's whoever runs
 * which part (tests/test_codelets_kvcache). */
#include <stdatomic.h>
#include <string.h>

#include "glue.h"

struct gang {
  atomic_uint claimed[EELLM_LAYER_STEPS], done[EELLM_LAYER_STEPS];
  atomic_int published; /* call holds layer_cached's buffers */
  atomic_int users;     /* the tasks yet to let go of it; the last frees it */
  struct eellm_cpu_layer_call call;
};

struct layer_cached_args {
  struct eellm_cpu_layer_shape shape;
  unsigned present;  /* bit t: tensor t (enum eellm_layer_tensor) has a buffer */
  struct gang *gang; /* NULL: no helper */
};

EELLM_CODELET_CPU(layer_cached)
EELLM_CODELET_CPU(layer_cached_helper)

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* The steps' parts this task claims, then each step's end. */
static void share_steps(struct gang *g) {
  for (unsigned step = 0; step < EELLM_LAYER_STEPS; step++) {
    unsigned parts = eellm_cpu_layer_step_parts(step), part;
    while ((part = atomic_fetch_add(&g->claimed[step], 1)) < parts) {
      eellm_cpu_layer_step(&g->call, step, part);
      atomic_fetch_add(&g->done[step], 1);
    }
    while (atomic_load(&g->done[step]) < parts) cpu_relax();
  }
}

static void let_go(struct gang *g) {
  if (atomic_fetch_sub(&g->users, 1) == 1) free(g);
}

/* How long the helper waits for layer_cached to start before leaving the layer to it:
 * both become ready when the layer's input does, and the scheduler places both (the
 * worker that ran the step's choice submits the next step's tasks in its callback, so
 * pinning either to a worker could hold it there). */
#define HELPER_WAIT_US 20.0

/* x [N, D] (R): only for its readiness; the rest comes through the gang. */
static void layer_cached_helper_cpu(void *buffers[], void *cl_arg) {
  (void)buffers;
  struct gang *g = *(struct gang *const *)cl_arg;
  double give_up = starpu_timing_now() + HELPER_WAIT_US;
  while (!atomic_load(&g->published) && starpu_timing_now() < give_up) cpu_relax();
  if (atomic_load(&g->published)) share_steps(g);
  let_go(g);
}

/* x [N, D] (R), positions [N], slots [N] int32 (R), cache [S * capacity, 2 att]
 * (RW), r [N, D] (W), y [N, D] (W), the present tensors in enum order (R), work
 * (SCRATCH). */
static void layer_cached_cpu(void *buffers[], void *cl_arg) {
  const struct layer_cached_args *a = cl_arg;
  struct eellm_tensor_view x = eellm_tensor_view(buffers[0]), cache = eellm_tensor_view(buffers[3]);
  struct eellm_tensor_view r = eellm_tensor_view(buffers[4]), y = eellm_tensor_view(buffers[5]);
  struct eellm_cpu_layer_weights w = {0};
  int b = 6;
  for (int i = 0; i < EELLM_LAYER_TENSORS; i++) {
    if (!(a->present >> i & 1)) continue;
    struct eellm_tensor_view t = eellm_tensor_view(buffers[b++]);
    w.t[i] = (const float *)t.ptr;
    w.ld[i] = t.ld;
  }
  struct eellm_cpu_layer_call call = {x.rows,
                                      &a->shape,
                                      &w,
                                      (const float *)x.ptr,
                                      x.ld,
                                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
                                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[2]),
                                      (float *)cache.ptr,
                                      cache.ld,
                                      (float *)r.ptr,
                                      r.ld,
                                      (float *)y.ptr,
                                      y.ld,
                                      (void *)STARPU_VECTOR_GET_PTR(buffers[b])};
  struct gang *g = a->gang;
  if (!g) {
    eellm_cpu_layer_cached(&call);
    return;
  }
  g->call = call;
  atomic_store(&g->published, 1);
  share_steps(g);
  let_go(g);
}

/* A helper where two CPU workers and no MPI peers are (eellm_split_count), unless
 * EELLM_DECODE_HELPER=0. */
static int shared_by_two(void) {
  const char *helper = getenv("EELLM_DECODE_HELPER");
  return eellm_split_count(2) == 2 && !(helper && strcmp(helper, "0") == 0);
}

int eellm_layer_cached_fuses(size_t rows, const starpu_data_handle_t w[EELLM_LAYER_TENSORS]) {
  const char *fuse = getenv("EELLM_FUSE_DECODE");
  if ((fuse && strcmp(fuse, "0") == 0) || starpu_cuda_worker_get_count() > 0) return 0;
  static const enum eellm_layer_tensor products[] = {EELLM_QKV_W, EELLM_O_W, EELLM_FC_W,
                                                     EELLM_PROJ_W};
  for (size_t i = 0; i < sizeof products / sizeof *products; i++) {
    starpu_data_handle_t weight = w[products[i]];
    if (eellm_linear_fwd_blocks(rows, starpu_matrix_get_nx(weight), weight) > 1) return 0;
  }
  return 1;
}

/* The sizes the tensors and cache give; a layer they do not fit would make the
 * kernel read past its buffers. */
static struct eellm_cpu_layer_shape layer_shape(starpu_data_handle_t x,
                                                const starpu_data_handle_t w[EELLM_LAYER_TENSORS],
                                                starpu_data_handle_t cache, unsigned capacity,
                                                const struct eellm_layer_kind *kind) {
  size_t d = starpu_matrix_get_nx(x), att = starpu_matrix_get_nx(w[EELLM_QKV_W]) / 3;
  struct eellm_cpu_layer_shape s = {
      .d = d,
      .hd = kind->heads ? att / kind->heads : 0,
      .fc = starpu_matrix_get_nx(w[EELLM_FC_W]),
      .ffn = starpu_matrix_get_ny(w[EELLM_PROJ_W]),
      .capacity = capacity,
      .n_slots = capacity ? starpu_matrix_get_ny(cache) / capacity : 0,
      .kind = *kind};
  int ok = s.hd > 0 && s.hd * kind->heads == att && (!kind->rope || s.hd % 2 == 0) &&
           s.n_slots > 0 && starpu_matrix_get_nx(cache) == 2 * att &&
           starpu_matrix_get_ny(w[EELLM_QKV_W]) == d && starpu_matrix_get_ny(w[EELLM_O_W]) == att &&
           starpu_matrix_get_nx(w[EELLM_O_W]) == d && starpu_matrix_get_ny(w[EELLM_FC_W]) == d &&
           s.fc == s.ffn * (kind->act == EELLM_SWIGLU ? 2 : 1) &&
           starpu_matrix_get_nx(w[EELLM_PROJ_W]) == d;
  if (!ok) {
    fprintf(stderr,
            "eellm: layer_cached: tensors of d %zu, %zu attention columns, fc %zu, ffn %zu "
            "do not fit %u heads and cache capacity %u\n",
            d, att, s.fc, s.ffn, kind->heads, capacity);
    abort();
  }
  return s;
}

void eellm_insert_layer_cached(starpu_data_handle_t x,
                               const starpu_data_handle_t w[EELLM_LAYER_TENSORS],
                               starpu_data_handle_t positions, starpu_data_handle_t slots,
                               starpu_data_handle_t cache, starpu_data_handle_t r,
                               starpu_data_handle_t y, unsigned capacity,
                               const struct eellm_layer_kind *kind,
                               const struct eellm_task_info *info) {
  struct layer_cached_args args = {layer_shape(x, w, cache, capacity, kind), 0, NULL};
  struct starpu_data_descr buffers[6 + EELLM_LAYER_TENSORS + 1] = {
      {x, STARPU_R},      {positions, STARPU_R}, {slots, STARPU_R},
      {cache, STARPU_RW}, {r, STARPU_W},         {y, STARPU_W}};
  int n = 6;
  for (int i = 0; i < EELLM_LAYER_TENSORS; i++) {
    if (!w[i]) continue;
    args.present |= 1u << i;
    buffers[n++] = (struct starpu_data_descr){w[i], STARPU_R};
  }
  n = eellm_add_scratch(buffers, n,
                        eellm_cpu_layer_cached_work_bytes(starpu_matrix_get_ny(x), &args.shape));
  if (!shared_by_two()) {
    eellm_submit(&layer_cached_cl, buffers, n, &args, sizeof args, info);
    return;
  }
  args.gang = calloc(1, sizeof *args.gang);
  if (!args.gang) {
    fprintf(stderr, "eellm: out of memory submitting layer_cached\n");
    abort();
  }
  atomic_init(&args.gang->users, 2);
  eellm_submit(&layer_cached_cl, buffers, n, &args, sizeof args, info);
  struct starpu_data_descr input = {x, STARPU_R};
  eellm_submit(&layer_cached_helper_cl, &input, 1, &args.gang, sizeof args.gang, info);
}
