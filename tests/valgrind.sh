#!/usr/bin/env bash
# One training step and one generation of a tiny model under valgrind's memcheck
# (about 20 s; part of make test). Passes when memcheck reports no error
# (invalid reads or writes, uses of uninitialised values, bad frees) but those
# tests/valgrind.supp suppresses, each entry with its reason. Leaks are
# LeakSanitizer's job (make asan), so --leak-check is off. Skipped in the
# sanitizer build, whose programs cannot run under valgrind.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"
if grep -qs '^EELLM_SANITIZE:BOOL=ON' "$build/CMakeCache.txt"; then
  echo "valgrind: skipped (an ASan build)"
  exit 0
fi
command -v valgrind > /dev/null || { echo "valgrind.sh: valgrind not found (scripts/install-deps)"; exit 1; }
# One CPU worker, no hwloc plugins: fewer threads and less library noise.
export STARPU_SILENT=1 STARPU_NCPU=1 STARPU_NCUDA=0 STARPU_NOPENCL=0 HWLOC_PLUGINS_PATH=/nonexistent
export OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1
export OPENBLAS_NUM_THREADS=1
vg=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=no --track-origins=yes
    --num-callers=30 --suppressions="$(dirname "$0")/valgrind.supp" --gen-suppressions=all)

for i in $(seq 1 20); do echo "the quick brown fox jumps over the lazy dog number $i."; done > "$tmp/doc.txt"
"$eellm" tokenize --tokenizer byte "$tmp/doc.txt" -o "$tmp/train.bin" > /dev/null
check "tokenized" '[ -s "$tmp/train.bin" ]'
cat > "$tmp/train.txtpb" <<EOT
optimizer { lr: 1e-3 grad_clip: 1.0 }
global_batch: 2
micro_batches: 1
seq_len: 16
seed: 1
steps: 1
eval_interval: 1000
checkpoint_interval: 1000
EOT

"${vg[@]}" --log-file="$tmp/train.vg" "$eellm" train --model tests/specs/tiny.txtpb \
  --train "$tmp/train.txtpb" --data "$tmp/train.bin" --out "$tmp/run" > "$tmp/train.log" 2>&1
status=$?
check "one training step under memcheck: no error (status $status)" '[ $status -eq 0 ]'
[ $status -eq 0 ] || { tail -n 40 "$tmp/train.log"; grep -A30 '^==[0-9]*== [A-Z]' "$tmp/train.vg" | head -n 80; }
grep 'ERROR SUMMARY' "$tmp/train.vg" | tail -n 1

"${vg[@]}" --log-file="$tmp/gen.vg" "$eellm" generate --ckpt "$tmp/run" --prompt "the quick" \
  --max-tokens 4 > "$tmp/gen.log" 2>&1
status=$?
check "one generation under memcheck: no error (status $status)" '[ $status -eq 0 ]'
[ $status -eq 0 ] || { tail -n 40 "$tmp/gen.log"; grep -A30 '^==[0-9]*== [A-Z]' "$tmp/gen.vg" | head -n 80; }
grep 'ERROR SUMMARY' "$tmp/gen.vg" | tail -n 1
[ -n "${VALGRIND_KEEP:-}" ] && cp "$tmp"/*.vg "$tmp"/*.log "$VALGRIND_KEEP"/
finish valgrind
