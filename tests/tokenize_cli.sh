#!/usr/bin/env bash
# `eellm tokenize` and `eellm detokenize` on a small generated corpus: documents in
# name order separated by end-of-text, text back byte for byte (invalid UTF-8
# included), the validation split takes the last documents, output is
# deterministic, and bad input gets one line, exit status 2 and no overwritten output.
set -u
build=${1:-build}
eellm="$build/eellm"
. "$(dirname "$0")/lib.sh"

scripts/fetch-tokenizer || fail "scripts/fetch-tokenizer"

# The corpus: 8 documents in nested directories, plus an empty and a hidden file
# that are not documents.
corpus=$tmp/corpus
mkdir -p "$corpus/b_sub/deeper"
printf 'Hello world' > "$corpus/a1.txt"
printf 'Caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\n' > "$corpus/a2.txt"
printf 'bad bytes \xff\xfe and a cut \xe4\xb8' > "$corpus/a3.txt"
printf "It's 42, isn't it?\n\n\n   spaces   \t\n" > "$corpus/b_sub/c1.txt"
printf 'nested deeper' > "$corpus/b_sub/deeper/d1.txt"
printf 'one more\r\n' > "$corpus/c2.txt"
printf '<|endoftext|> is plain text here' > "$corpus/d3.txt"
printf 'the last document' > "$corpus/z9.txt"
: > "$corpus/empty.txt"
printf 'hidden' > "$corpus/.hidden"
order=(a1.txt a2.txt a3.txt b_sub/c1.txt b_sub/deeper/d1.txt c2.txt d3.txt z9.txt)

# expected FIRST LAST: documents FIRST..LAST of the order joined by <|endoftext|>
expected() {
  local i
  for ((i = $1; i <= $2; i++)); do
    [ "$i" -gt "$1" ] && printf '<|endoftext|>'
    cat "$corpus/${order[$i]}"
  done
}
expected 0 7 > "$tmp/all.txt"
expected 0 5 > "$tmp/train.txt"
expected 6 7 > "$tmp/val.txt"

for kind in byte gpt2; do
  if "$eellm" tokenize --tokenizer $kind "$corpus" -o "$tmp/$kind.bin" > "$tmp/out" 2>&1 &&
     grep -Eq "^train $tmp/$kind.bin: 8 documents, .* tokens, [0-9.]+ bytes/token$" "$tmp/out" &&
     grep -Eq "^$kind tokenizer: .* MB in .* s" "$tmp/out"; then pass; else fail "$kind tokenize"; cat "$tmp/out"; fi
  check "$kind detokenize gives the text back" \
    bash -c "'$eellm' detokenize '$tmp/$kind.bin' -o '$tmp/$kind.txt' && cmp -s '$tmp/$kind.txt' '$tmp/all.txt'"
  check "$kind detokenize to stdout" \
    bash -c "'$eellm' detokenize '$tmp/$kind.bin' | cmp -s - '$tmp/all.txt'"
  "$eellm" tokenize --tokenizer $kind "$corpus" -o "$tmp/$kind.again.bin" > /dev/null
  check "$kind output is deterministic" cmp -s "$tmp/$kind.bin" "$tmp/$kind.again.bin"

  # 8 documents, a quarter for validation: the last 2 by name.
  if "$eellm" tokenize --tokenizer $kind "$corpus" -o "$tmp/t.bin" --val-out "$tmp/v.bin" \
       --val-fraction 0.25 > "$tmp/out" 2>&1 &&
     grep -q "^train $tmp/t.bin: 6 documents" "$tmp/out" && grep -q "^val   $tmp/v.bin: 2 documents" "$tmp/out" &&
     "$eellm" detokenize "$tmp/t.bin" | cmp -s - "$tmp/train.txt" &&
     "$eellm" detokenize "$tmp/v.bin" | cmp -s - "$tmp/val.txt"; then pass; else fail "$kind validation split"; cat "$tmp/out"; fi
done

# byte: one token per byte plus one end-of-text between documents.
bytes=$(cat "${order[@]/#/$corpus/}" | wc -c)
check "byte file size" test "$(stat -c %s "$tmp/byte.bin")" -eq $((32 + 2 * (bytes + 7)))
# gpt2: "Hello world" is 15496 995, then end-of-text 50256.
check "gpt2 ids of Hello world" \
  test "$(od -A n -t u2 -j 32 -N 6 "$tmp/gpt2.bin" | tr -s ' ')" = " 15496 995 50256"
# The header: magic, version 1, tokenizer 1 (gpt2), vocabulary 50257, end-of-text 50256.
check "gpt2 header" \
  test "$(od -A n -t u4 -j 8 -N 16 "$tmp/gpt2.bin" | tr -s ' ')" = " 1 1 50257 50256"

# Files given one by one keep the order given.
"$eellm" tokenize --tokenizer byte "$corpus/z9.txt" "$corpus/a1.txt" -o "$tmp/two.bin" > /dev/null
check "inputs keep their order" \
  bash -c "'$eellm' detokenize '$tmp/two.bin' | cmp -s - <(printf 'the last document<|endoftext|>Hello world')"

check "tokenize --help" bash -c "'$eellm' tokenize --help | grep -q '^usage: eellm tokenize'"
check "detokenize --help" bash -c "'$eellm' detokenize --help | grep -q '^usage: eellm detokenize'"

# refused NAME PATTERN COMMAND...: expect_error, and $tmp/keep.bin (an earlier
# output) unchanged.
cp "$tmp/byte.bin" "$tmp/keep.bin"
refused() {
  expect_error "$@"
  check "$1: the earlier output is untouched" cmp -s "$tmp/keep.bin" "$tmp/byte.bin"
}
t="$eellm tokenize"
refused "missing input" "nosuch\.txt: No such file" $t --tokenizer byte "$corpus" "$tmp/nosuch.txt" -o "$tmp/keep.bin"
mkdir "$tmp/hollow" && : > "$tmp/hollow/empty.txt"
refused "empty input" "no text" $t --tokenizer byte "$tmp/hollow" -o "$tmp/keep.bin"
refused "unwritable output" "nodir/out\.bin: cannot create" $t --tokenizer byte "$corpus" -o "$tmp/nodir/out.bin"
refused "unwritable validation output" "nodir/val\.bin: cannot create" \
  $t --tokenizer byte "$corpus" -o "$tmp/keep.bin" --val-out "$tmp/nodir/val.bin"
refused "unknown tokenizer" "unknown tokenizer 'bpe'" $t --tokenizer bpe "$corpus" -o "$tmp/keep.bin"
refused "no tokenizer" "needs --tokenizer" $t "$corpus" -o "$tmp/keep.bin"
refused "no output" "needs -o" $t --tokenizer byte "$corpus"
refused "bad fraction" "val-fraction wants a number in \(0, 1\), got '1.5'" \
  $t --tokenizer byte "$corpus" -o "$tmp/keep.bin" --val-out "$tmp/v.bin" --val-fraction 1.5
refused "one document cannot be split" "at least 2 documents" \
  $t --tokenizer byte "$corpus/a1.txt" -o "$tmp/keep.bin" --val-out "$tmp/v.bin"
refused "missing tokenizer files" "nodir/encoder\.json: cannot open" \
  $t --tokenizer gpt2 --tokenizer-dir "$tmp/nodir" "$corpus" -o "$tmp/keep.bin"
refused "EELLM_TOKENIZER_DIR" "envdir/encoder\.json" \
  env EELLM_TOKENIZER_DIR="$tmp/envdir" $t --tokenizer gpt2 "$corpus" -o "$tmp/keep.bin"
head -c 40 "$tmp/byte.bin" > "$tmp/cut.bin"
refused "detokenize a truncated file" "cut\.bin: .*truncated" "$eellm" detokenize "$tmp/cut.bin"
refused "detokenize a missing file" "nosuch\.bin: cannot open" "$eellm" detokenize "$tmp/nosuch.bin"
refused "detokenize into a missing directory" "nodir/out\.txt: cannot create" \
  "$eellm" detokenize "$tmp/byte.bin" -o "$tmp/nodir/out.txt"
check "no temporary files left" test -z "$(find "$tmp" -name '.*.??????')"

finish tokenize_cli
