#!/usr/bin/env bash
# The public-API example builds, runs, and reports a loss near log(vocab) for
# every exit of the untrained default model.
set -u
build=${1:-build}
out=$("$build/example_submit" examples/default.txtpb) || { echo "example_submit failed"; exit 1; }
echo "$out"
echo "$out" | awk '
  /log\(vocab\)/ { match($0, /= [0-9.]+/); want = substr($0, RSTART + 2, RLENGTH - 2) }
  /^exit/ { n++; loss = $NF; if (loss < want - 0.2 || loss > want + 0.2) bad++ }
  END { printf "example_submit: %d passed, %d failed\n", n - bad, bad + (n != 3); exit (bad || n != 3) }'
