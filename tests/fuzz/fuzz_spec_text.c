/* Text specs: protobuf text format (runtime/io/textpb.c) as eellm.Model and
 * eellm.Train, and the loaders that read a spec file (eellm_model_spec_load,
 * eellm_train_spec_load: header comment, text or binary, validation).
 *
 * Oracles: a message that parses prints to text that parses to an equal
 * message (packed bytes) and prints the same again; a refused text has a
 * one-line error; the loader accepts a textual file exactly when the parser
 * and the checker do, with an equal message. */
#include "fuzz_spec.h"

#include "eellm.h"

static void parse_as(const char *text, size_t len, const ProtobufCMessageDescriptor *desc) {
  char err[512] = "";
  struct eellm_textpb_locs locs = {0};
  ProtobufCMessage *msg = eellm_textpb_parse(text, len, desc, "in.txtpb", &locs, err, sizeof err);
  if (msg) {
    fuzz_text_round_trip(msg);
    ProtobufCMessage *again = fuzz_binary_round_trip(msg);
    protobuf_c_message_free_unpacked(again, NULL);
    /* Every recorded location is inside the text. */
    for (size_t i = 0; i < locs.n; i++)
      FUZZ_CHECK(locs.v[i].line >= 1 && locs.v[i].col >= 1, "location %d:%d", locs.v[i].line,
                 locs.v[i].col);
    protobuf_c_message_free_unpacked(msg, NULL);
  } else {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "error is not one line: '%s'", err);
    FUZZ_CHECK(locs.n == 0, "a refused text left %zu locations", locs.n);
  }
  eellm_textpb_locs_free(&locs);
}

/* A fixed model for validating training specs against. */
static Eellm__Model *fixed_model(void) {
  static Eellm__Model m;
  static int done;
  if (!done) {
    eellm__model__init(&m);
    m.vocab_size = 257, m.context_length = 64, m.d_model = 32, m.n_heads = 4, m.n_layers = 4;
    done = 1;
  }
  return &m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  parse_as(text, size, &eellm__model__descriptor);
  parse_as(text, size, &eellm__train__descriptor);

  /* The loaders, on the same bytes as a file without a suffix: text if the
   * first 512 bytes look textual, else binary. */
  const char *path = fuzz_memfile(data, size);
  if (!path) return 0;
  char err[512] = "";
  Eellm__Model *model = eellm_model_spec_load(path, err, sizeof err);
  if (!model) FUZZ_CHECK(fuzz_one_line(err, sizeof err), "load error is not one line: '%s'", err);
  int textual = 1;
  for (size_t i = 0; i < size && i < 512; i++)
    if ((data[i] < 0x20 && data[i] != '\n' && data[i] != '\t' && data[i] != '\r') ||
        data[i] == 0x7f)
      textual = 0;
  if (textual && !memmem(data, size, "proto-message", 13)) {
    /* Without a header the loader is the parser, then the checker. */
    char perr[512] = "";
    ProtobufCMessage *parsed =
        eellm_textpb_parse(text, size, &eellm__model__descriptor, NULL, NULL, perr, sizeof perr);
    int valid = parsed && eellm_model_spec_check((Eellm__Model *)parsed, "x", perr, sizeof perr) == 0;
    FUZZ_CHECK(valid == (model != NULL), "the loader %s what parser and checker %s: %s",
               model ? "accepts" : "refuses", valid ? "accept" : "refuse", model ? perr : err);
    if (model) FUZZ_CHECK(fuzz_pack_equal(parsed, &model->base), "loader and parser differ");
    if (parsed) protobuf_c_message_free_unpacked(parsed, NULL);
  }
  if (model) {
    fuzz_text_round_trip(&model->base);
    char err2[512] = "";
    FUZZ_CHECK(eellm_model_spec_check(model, "x", err2, sizeof err2) == 0,
               "a loaded model fails the check: %s", err2);
    eellm_model_spec_free(model);
  }
  Eellm__Train *train = eellm_train_spec_load(path, fixed_model(), err, sizeof err);
  if (train) {
    fuzz_text_round_trip(&train->base);
    eellm_train_spec_free(train);
  } else {
    FUZZ_CHECK(fuzz_one_line(err, sizeof err), "train load error is not one line: '%s'", err);
  }
  return 0;
}
