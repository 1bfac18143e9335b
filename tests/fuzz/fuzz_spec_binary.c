/* Binary specs: protobuf-c's unpack of eellm.Model and eellm.Train, then
 * eellm_model_spec_check, and the loader on a .pb file.
 *
 * Oracles: what eellm_spec_unpack accepts packs to bytes that unpack to an equal message; the
 * checker gives the re-encoded message the same verdict and message; the
 * loader accepts the .pb file exactly when unpack and checker do; a model the
 * checker accepts round trips through the text format too. */
#include "fuzz_spec.h"

#include "eellm.h"

static const char *pb_path(void) {
  static char path[300];
  if (!path[0]) snprintf(path, sizeof path, "%s/spec.pb", fuzz_tmpdir());
  return path;
}

static void cleanup(void) {
  unlink(pb_path());
  rmdir(fuzz_tmpdir());
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512] = "", err2[512] = "";
  /* eellm's unpack: protobuf-c's, less what would not unpack again. */
  Eellm__Model *m = (Eellm__Model *)eellm_spec_unpack(&eellm__model__descriptor, size, data);
  int valid = 0;
  if (m) {
    Eellm__Model *again = (Eellm__Model *)fuzz_binary_round_trip(&m->base);
    valid = eellm_model_spec_check(m, "a.pb", err, sizeof err) == 0;
    int valid2 = eellm_model_spec_check(again, "a.pb", err2, sizeof err2) == 0;
    FUZZ_CHECK(valid == valid2 && (valid || strcmp(err, err2) == 0),
               "the check of the re-encoded spec differs: '%s' vs '%s'", err, err2);
    if (!valid) FUZZ_CHECK(fuzz_one_line(err, sizeof err), "check error not one line: '%s'", err);
    char field[256];
    FUZZ_CHECK(eellm_spec_diff(&m->base, &again->base, field, sizeof field) == 0,
               "eellm_spec_diff sees a difference in '%s'", field);
    /* A valid spec can be written as text (eellm's converters do) and read back. */
    if (valid) fuzz_text_round_trip(&m->base);
    eellm_model_spec_free(again);
  }

  /* The loader on a .pb file: binary whatever the bytes look like. */
  FILE *f = fopen(pb_path(), "wb");
  if (f) {
    fwrite(data, 1, size, f);
    fclose(f);
    Eellm__Model *loaded = eellm_model_spec_load(pb_path(), err2, sizeof err2);
    FUZZ_CHECK((loaded != NULL) == valid, "the loader %s what unpack and check %s: '%s' / '%s'",
               loaded ? "accepts" : "refuses", valid ? "accept" : "refuse", err, err2);
    if (loaded) FUZZ_CHECK(fuzz_pack_equal(&m->base, &loaded->base), "loader and unpack differ");
    else FUZZ_CHECK(fuzz_one_line(err2, sizeof err2), "load error not one line: '%s'", err2);
    eellm_model_spec_free(loaded);
  }
  eellm_model_spec_free(m);

  Eellm__Train *t = (Eellm__Train *)eellm_spec_unpack(&eellm__train__descriptor, size, data);
  if (t) {
    ProtobufCMessage *again = fuzz_binary_round_trip(&t->base);
    if (fuzz_enums_known(&t->base)) fuzz_text_round_trip(&t->base);
    protobuf_c_message_free_unpacked(again, NULL);
    eellm__train__free_unpacked(t, NULL);
  }
  return 0;
}
