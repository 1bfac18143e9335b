#!/usr/bin/env bash
# `cmake --install` gives a usable library: headers, libeellm, a pkg-config file
# and the command; a program built against the installed files alone (the C API
# example) compiles, links and runs.
set -u
build=${1:-build}
. "$(dirname "$0")/lib.sh"

cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log" 2>&1
status=$?
check "cmake --install" '[ $status -eq 0 ]'
pcdir=$(dirname "$(find "$tmp/prefix" -name eellm.pc)")
libdir=$(dirname "$pcdir")
check "pkg-config file installed" '[ -f "$pcdir/eellm.pc" ]'
check "command installed" '[ -x "$tmp/prefix/bin/eellm" ]'
check "headers installed" '[ -f "$tmp/prefix/include/eellm/eellm.h" ] && [ -f "$tmp/prefix/include/eellm/model.pb-c.h" ]'
# The library exports what the installed headers declare EELLM_API, and nothing
# else but protobuf-c's generated eellm__* functions and descriptors (and, in the
# ASan build, the __odr_asan.* indicators ASan adds for each exported global).
nm -D --defined-only "$libdir/libeellm.so" | awk '{ print $3 }' | grep -v '^eellm__' |
  grep -v '^__odr_asan\.' | sort > "$tmp/exported"
sed -n 's/.*EELLM_API[^(]*[ *]\([a-z_0-9]*\)(.*/\1/p' $(ls "$tmp/prefix/include/eellm/"*.h | grep -v '/api\.h$') |
  sort > "$tmp/declared"
check "exports = the headers' EELLM_API declarations ($(diff "$tmp/declared" "$tmp/exported" | grep '^[<>]' | head -5 | tr '\n' ' '))" \
  '[ -s "$tmp/declared" ] && cmp -s "$tmp/declared" "$tmp/exported"'
check "libeellm does not need libmicrohttpd" '! ldd "$libdir/libeellm.so" | grep -q microhttpd'
check "eellm.pc requires only libprotobuf-c" '[ "$(PKG_CONFIG_PATH="$pcdir" pkg-config --print-requires eellm)" = libprotobuf-c ]'
export PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# shellcheck disable=SC2046
# A sanitized library (make asan) needs sanitized programs.
sanitize=()
nm -D "$libdir/libeellm.so" 2>/dev/null | grep -q __asan_ && sanitize=(-fsanitize=address,undefined)
cc -Wall -Wextra "${sanitize[@]}" -o "$tmp/submit" examples/submit.c $(pkg-config --cflags --libs eellm) > "$tmp/cc.log" 2>&1
status=$?
check "example builds against the installed library ($(head -c 300 "$tmp/cc.log"))" '[ $status -eq 0 ]'
# Every installed header compiles on its own, with the flags eellm.pc gives.
for h in "$tmp/prefix/include/eellm/"*.h; do
  name=$(basename "$h")
  case $name in eellm.h | *.pb-c.h) inc="<$name>" ;; *) inc="<eellm/$name>" ;; esac
  echo "#include $inc" > "$tmp/h.c"
  # shellcheck disable=SC2046
  cc -Wall -Wextra -Werror -c -o "$tmp/h.o" "$tmp/h.c" $(pkg-config --cflags eellm) > "$tmp/h.log" 2>&1 ||
    echo "$inc: $(head -c 300 "$tmp/h.log")" >> "$tmp/headers.log"
done
check "every installed header compiles alone ($(head -c 300 "$tmp/headers.log" 2>/dev/null))" '[ ! -s "$tmp/headers.log" ]'
LD_LIBRARY_PATH="$libdir" STARPU_SILENT=1 "$tmp/submit" examples/default.txtpb > "$tmp/run.log" 2>&1
status=$?
check "and runs" '[ $status -eq 0 ] && grep -q "final" "$tmp/run.log"'
"$tmp/prefix/bin/eellm" --help > /dev/null 2>&1
status=$?
check "installed command runs" '[ $status -eq 0 ]'
finish install
