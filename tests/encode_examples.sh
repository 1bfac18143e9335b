#!/bin/bash
# For every examples/*.txtpb, the bytes eellm's text parser + protobuf_c pack
# produce must equal protoc --encode's, byte for byte.
# Usage (from the source root): bash tests/encode_examples.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: $0 BUILD_DIR}
encode=$build/tests/spec_encode
command -v protoc > /dev/null || { echo "FAIL protoc (protobuf-compiler) not found"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

checked=0 failed=0
for spec in examples/*.txtpb; do
  [ -e "$spec" ] || continue
  message=$(sed -n 's/^#[[:space:]]*proto-message:[[:space:]]*\([A-Za-z0-9_.]*\).*/\1/p' "$spec" | head -n 1)
  message=${message:-eellm.Model}
  name=$(basename "$spec" .txtpb)
  protoc --proto_path=schemas --encode="$message" model.proto train.proto \
    < "$spec" > "$work/$name.protoc.pb"
  "$encode" "$spec" "$work/$name.eellm.pb"
  if cmp "$work/$name.protoc.pb" "$work/$name.eellm.pb"; then
    echo "ok $spec ($message, $(wc -c < "$work/$name.eellm.pb") bytes)"
  else
    echo "FAIL $spec: eellm's encoding differs from protoc --encode=$message"
    failed=$((failed + 1))
  fi
  checked=$((checked + 1))
done
if [ "$checked" -eq 0 ]; then
  echo "FAIL no examples/*.txtpb to check"
  exit 1
fi
echo "encode_examples: $((checked - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
