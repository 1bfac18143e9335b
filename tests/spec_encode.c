/* spec_encode IN OUT: reads spec IN (text or binary; eellm.Model unless its
 * proto-message header names eellm.Train) and writes it to OUT in binary.
 * Used by tests/encode_examples.sh to compare with protoc --encode. */
#include <stdio.h>

#include "eellm.h"
#include "runtime/io/specio.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
    return 2;
  }
  const ProtobufCMessageDescriptor *desc = eellm_spec_message_of(argv[1]);
  if (!desc) desc = &eellm__model__descriptor;
  char err[512];
  ProtobufCMessage *msg = eellm_spec_read(argv[1], desc, NULL, err, sizeof err);
  int rc = msg ? eellm_spec_write_binary(argv[2], msg, err, sizeof err) : -1;
  if (rc != 0) fprintf(stderr, "%s\n", err);
  protobuf_c_message_free_unpacked(msg, NULL);
  return rc == 0 ? 0 : 1;
}
