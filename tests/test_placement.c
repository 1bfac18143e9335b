/* The placement module: Megatron-LM's rank order, stages of layers and exits,
 * the final head on the last stage, and refused layouts. */
#include <stdio.h>
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
  eellm_model_spec_free(spec);
  return tu_finish();
}
