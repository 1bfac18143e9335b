/* The placement module: Megatron-LM's rank order, stages of layers and exits,
 * the final head on the last stage, and refused layouts. */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm.h"
#include "graph/placement.h"
#include "testutil.h"

/* Every rank of a (pp, tp, dp) layout maps to distinct coords and back, tensor
 * ranks innermost, then data, then stages. */
static void rank_order(void) {
  struct eellm_layout l = {.pp = 3, .tp = 2, .dp = 4};
  int round_trip = 1, innermost = 1;
  for (int r = 0; r < 24; r++) {
    struct eellm_coords c = eellm_layout_coords(&l, r);
    round_trip &= eellm_layout_rank(&l, c) == r && c.stage < 3 && c.tensor < 2 && c.data < 4;
    innermost &= c.tensor == (unsigned)r % 2 && c.data == (unsigned)r / 2 % 4 &&
                 c.stage == (unsigned)r / 8;
  }
  tu_ok(round_trip, "layout: rank -> coords -> rank for 3 x 2 x 4");
  tu_ok(innermost, "layout: tensor-parallel innermost, then data, then stage");
  struct eellm_coords c = {.stage = 2, .tensor = 1, .data = 3};
  tu_ok(eellm_layout_rank(&l, c) == 23, "layout: the last coords are the last rank");
}

static void stages(const Eellm__Model *spec) {
  char err[256];
  struct eellm_placement p;
  uint32_t split[2] = {1, spec->n_layers - 1};
  struct eellm_layout l = {.pp = 2, .tp = 1, .dp = 1};
  tu_ok(eellm_placement_init(&p, spec, l, split, 2, 0, 0, err, sizeof err) == 0, "pp 2: placed");
  tu_ok(p.layer_stage[0] == 0 && p.layer_stage[spec->n_layers - 1] == 1,
        "pp 2: layer 1 on stage 0, the rest on stage 1");
  tu_ok(eellm_exit_stage(&p, spec->n_exits) == 1, "pp 2: the final head on the last stage");
  int exits_home = 1;
  for (unsigned k = 0; k < spec->n_exits; k++)
    exits_home &= eellm_exit_stage(&p, k) == p.layer_stage[eellm_exit_home_layer(spec->exits[k])];
  tu_ok(exits_home, "pp 2: every exit on the stage of its home layer");
  tu_ok(eellm_stage_rank(&p, 1) == 1 && eellm_stage_rank(&p, 0) == 0,
        "pp 2: stage s on rank s");
  tu_ok(p.window[0] == 2 && p.window[1] == 1, "pp 2: 1F1B windows of P - s micro-batches");
  eellm_placement_free(&p);

  l.pp = 2;
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 3, 0, err, sizeof err) == -1 &&
            strstr(err, "3 ranks"),
        "pp 2 on 3 ranks: refused");
  l.pp = spec->n_layers + 1;
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 0, 0, err, sizeof err) == -1,
        "more stages than layers: refused");
}

/* Data-parallel replicas: rank 3 of (pp 2, dp 2) is stage 1 of replica 1; its
 * stages run on replica 1's ranks, its root is replica 1's stage 0, and it
 * takes no part in gathers to rank 0. With tp 2 each tensor index has a
 * pipeline of its own; tp must divide the heads; replicas or tensor-parallel
 * ranks in one process are refused. */
static void replicas(const Eellm__Model *spec) {
  char err[256];
  struct eellm_placement p;
  struct eellm_layout l = {.pp = 2, .tp = 1, .dp = 2};
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 4, 3, err, sizeof err) == 0,
        "pp 2 x dp 2 on 4 ranks: placed");
  tu_ok(p.self.stage == 1 && p.self.data == 1, "rank 3: stage 1 of replica 1");
  tu_ok(eellm_stage_rank(&p, 0) == 1 && eellm_stage_rank(&p, 1) == 3,
        "replica 1's stages on ranks 1 and 3");
  tu_ok(eellm_root_rank(&p) == 1 && !eellm_gathers(&p), "replica 1's root is rank 1; no gathers");
  eellm_placement_free(&p);
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 2, 0, err, sizeof err) == -1 &&
            strstr(err, "2 replicas, on 2 ranks"),
        "pp 2 x dp 2 on 2 ranks: refused");
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 0, 0, err, sizeof err) == -1,
        "replicas in one process: refused");
  l.tp = 2;
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 8, 5, err, sizeof err) == 0 &&
            p.self.stage == 1 && p.self.data == 0 && p.self.tensor == 1 &&
            eellm_stage_rank(&p, 0) == 1 && eellm_root_rank(&p) == 1,
        "pp 2 x dp 2 x tp 2: rank 5 is tensor 1 of replica 0's stage 1; its pipeline is ranks 1, 5");
  eellm_placement_free(&p);
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 4, 0, err, sizeof err) == -1 &&
            strstr(err, "2 tensor-parallel ranks, times 2 replicas, on 4 ranks"),
        "pp 2 x dp 2 x tp 2 on 4 ranks: refused");
  l.tp = 3;
  l.dp = 1;
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 6, 0, err, sizeof err) == -1 &&
            strstr(err, "parallelism.tp 3 does not divide n_heads"),
        "tp 3 for 4 heads: refused");
  l.tp = 2;
  tu_ok(eellm_placement_init(&p, spec, l, NULL, 0, 0, 0, err, sizeof err) == -1,
        "tensor parallelism in one process: refused");
  size_t lo, n;
  eellm_tp_range(257, 2, 1, &lo, &n);
  tu_ok(lo == 128 && n == 129, "vocabulary 257 over tp 2: rows 128..256 on tensor 1");
}

/* The stage split as it was (a dynamic programme, O(pp n^2) time, O(pp n)
 * memory), the reference the fast split must match exactly. */
static void reference_split(const Eellm__Model *m, unsigned pp, unsigned *stage_layers) {
  unsigned n = m->n_layers;
  double *prefix = calloc(n + 1, sizeof *prefix);
  double *best = malloc(sizeof *best * pp * (n + 1));
  unsigned *cut = malloc(sizeof *cut * pp * (n + 1));
  for (unsigned i = 0; i < n; i++) {
    double cost = eellm_model_spec_layer_flops(m, m->context_length);
    for (unsigned k = 0; k < m->n_exits; k++)
      if (eellm_exit_home_layer(m->exits[k]) == i)
        cost += eellm_model_spec_exit_flops(m, k, m->context_length);
    if (i == n - 1) cost += 2.0 * m->d_model * m->vocab_size;
    prefix[i + 1] = prefix[i] + cost;
  }
  for (unsigned i = 0; i <= n; i++) best[i] = i ? prefix[i] : DBL_MAX;
  for (unsigned s = 1; s < pp; s++)
    for (unsigned i = 0; i <= n; i++) {
      double b = DBL_MAX;
      unsigned c = 0;
      for (unsigned j = s; j < i; j++) {
        double prev = best[(s - 1) * (n + 1) + j];
        double here = prefix[i] - prefix[j];
        double bottleneck = prev > here ? prev : here;
        if (bottleneck < b) b = bottleneck, c = j;
      }
      best[s * (n + 1) + i] = b;
      cut[s * (n + 1) + i] = c;
    }
  unsigned end = n;
  for (unsigned s = pp - 1; s > 0; s--) {
    unsigned start = cut[s * (n + 1) + end];
    stage_layers[s] = end - start;
    end = start;
  }
  stage_layers[0] = end;
  free(prefix);
  free(best);
  free(cut);
}

static uint64_t rng_state = 88172645463325252ull;
static unsigned draw(unsigned n) { /* 0..n-1 */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (unsigned)(rng_state % n);
}

/* Random specs, uniform ones (ties everywhere) and ones with exits of every
 * structure and placement: the split equals the reference's for every pp. */
static void split_matches_reference(void) {
  static const unsigned widths[] = {8, 16, 64, 768};
  int same = 1, cases = 0;
  for (int t = 0; t < 400 && same; t++) {
    Eellm__Model m;
    eellm__model__init(&m);
    m.n_layers = 1 + draw(t < 40 ? 12 : 40);
    m.d_model = widths[draw(4)];
    m.n_heads = 4;
    m.vocab_size = 1 + draw(t % 3 ? 60000 : 300);
    m.context_length = 1 + draw(2048);
    m.activation = draw(2);
    m.ffn_size = draw(2) ? 0 : 1 + draw(4096);
    Eellm__Exit exits[40], *ptrs[40];
    m.exits = ptrs;
    m.n_exits = 0;
    unsigned density = t % 4 == 0 ? 0 : 1 + draw(4); /* 0: no exits */
    for (unsigned l = 1; density && l <= m.n_layers; l++) {
      if (draw(density) != 0) continue;
      Eellm__Exit *e = &exits[m.n_exits];
      eellm__exit__init(e);
      e->has_layer = 1;
      e->layer = l;
      e->structure = draw(4);
      e->placement = l < m.n_layers ? draw(2) : EELLM__EXIT__PLACEMENT__POST;
      e->tied = draw(2);
      ptrs[m.n_exits++] = e;
    }
    for (unsigned pp = 1; pp <= m.n_layers && same; pp++) {
      unsigned got[40], want[40];
      memset(got, 0, sizeof got);
      int rc = eellm_model_spec_stage_split(&m, pp, NULL, 0, got);
      reference_split(&m, pp, want);
      same = rc == 0 && memcmp(got, want, pp * sizeof *got) == 0;
      if (!same) {
        fprintf(stderr, "case %d: %u layers, %zu exits, pp %u:", t, m.n_layers, m.n_exits, pp);
        for (unsigned s = 0; s < pp; s++) fprintf(stderr, " %u/%u", got[s], want[s]);
        fprintf(stderr, " (got/want)\n");
      }
      cases++;
    }
  }
  tu_ok(same, "stage split: the same as the reference programme on random specs");
  tu_ok(cases > 1000, "stage split: over a thousand (spec, pp) cases compared");
}

/* The largest pipelines the checks allow split at once, in memory linear in the layers. */
static void split_at_the_limits(void) {
  Eellm__Model m;
  eellm__model__init(&m);
  m.n_layers = EELLM_MAX_LAYERS;
  m.d_model = 64;
  m.n_heads = 4;
  unsigned n_exits = EELLM_MAX_LAYERS / 3;
  Eellm__Exit *exits = calloc(n_exits, sizeof *exits);
  Eellm__Exit **ptrs = calloc(n_exits, sizeof *ptrs);
  for (unsigned k = 0; k < n_exits; k++) {
    eellm__exit__init(&exits[k]);
    exits[k].has_layer = 1;
    exits[k].layer = 3 * k + 1 + k % 3 / 2;
    exits[k].structure = k % 4;
    ptrs[k] = &exits[k];
  }
  m.exits = ptrs;
  m.n_exits = n_exits;
  static unsigned split[EELLM_MAX_STAGES];
  int whole = 1;
  for (unsigned pp = EELLM_MAX_STAGES - 3; pp <= EELLM_MAX_STAGES; pp++) {
    unsigned long long total = 0;
    int nonempty = eellm_model_spec_stage_split(&m, pp, NULL, 0, split) == 0;
    for (unsigned s = 0; s < pp; s++) total += split[s], nonempty &= split[s] > 0;
    whole &= nonempty && total == m.n_layers;
  }
  tu_ok(whole, "stage split: 65536 layers and 21845 exits in 1021..1024 stages");
  tu_ok(eellm_model_spec_stage_split(&m, 0, NULL, 0, split) == -1 &&
            eellm_model_spec_stage_split(&m, m.n_layers + 1, NULL, 0, split) == -1,
        "stage split: pp outside 1..n_layers refused");
  tu_ok(eellm_model_spec_stage_split(&m, EELLM_MAX_STAGES + 1, NULL, 0, split) == -1,
        "stage split: more than EELLM_MAX_STAGES stages refused");
  m.n_layers = EELLM_MAX_LAYERS + 1;
  tu_ok(eellm_model_spec_stage_split(&m, 2, NULL, 0, split) == -1,
        "stage split: more than EELLM_MAX_LAYERS layers refused (no allocation)");
  free(exits);
  free(ptrs);
}

/* A split given through the API must cover the layers: sums that wrap, empty
 * stages and wrong counts are refused with one line. */
static void given_splits(const Eellm__Model *spec) {
  char err[256];
  struct eellm_placement p;
  struct eellm_layout l = {.pp = 2, .tp = 1, .dp = 1};
  uint32_t wraps[2] = {0xFFFFFFFFu, spec->n_layers + 1}; /* sums to n_layers mod 2^32 */
  tu_ok(eellm_placement_init(&p, spec, l, wraps, 2, 0, 0, err, sizeof err) == -1 &&
            strstr(err, "stage_layers") && !strchr(err, '\n'),
        "given split whose sum wraps: refused");
  uint32_t empty[2] = {0, spec->n_layers};
  tu_ok(eellm_placement_init(&p, spec, l, empty, 2, 0, 0, err, sizeof err) == -1 &&
            strstr(err, "empty stage"),
        "given split with an empty stage: refused");
  uint32_t three[3] = {1, 1, spec->n_layers - 2};
  tu_ok(eellm_placement_init(&p, spec, l, three, 3, 0, 0, err, sizeof err) == -1,
        "given split of 3 stages for pp 2: refused");
}

int main(void) {
  tu_start();
  char err[256];
  Eellm__Model *spec = eellm_model_spec_load("examples/default.txtpb", err, sizeof err);
  if (!spec) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  rank_order();
  stages(spec);
  replicas(spec);
  given_splits(spec);
  split_matches_reference();
  split_at_the_limits();
  eellm_model_spec_free(spec);
  return tu_finish();
}
