#!/usr/bin/env bash
# check_makefile.sh: the Makefile's detection tells the truth (`make test` runs it). A compiler that finds no system
# header (g++ -nostdinc) must be reported with ✗ for every library and stopped by check-headers with one line naming
# the header and its package; the normal compiler must be reported with ✓ where the header preprocesses.
#   bash tests/check_makefile.sh            (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check_makefile: $*" >&2; exit 1; }

blind=$(make -n --no-print-directory deps CXX='g++ -nostdinc' 2>&1 | grep '^\[config\] g++')
for lib in fmt doctest nlohmann-json stb zlib; do
  grep -q " $lib ✗" <<<"$blind" || fail "with a compiler that finds no header, '$lib' is not reported missing: $blind"
done

msg=$(make --no-print-directory check-headers CXX='g++ -nostdinc' 2>&1 >/dev/null) && fail "check-headers passed without headers"
msg=$(grep -v '^make' <<<"$msg")  # make's own "*** Error 1" line aside
[ "$(grep -c . <<<"$msg")" -eq 1 ] || fail "check-headers should say one line, said: $msg"
grep -q "missing header <fmt/format.h> (Debian package libfmt-dev): run 'make deps' first" <<<"$msg" \
  || fail "check-headers' message does not name the header and package: $msg"

seen=$(make -n --no-print-directory deps 2>&1 | grep '^\[config\] g++')
for pair in fmt:fmt/format.h doctest:doctest/doctest.h nlohmann-json:nlohmann/json.hpp stb:stb/stb_image.h zlib:zlib.h; do
  lib=${pair%%:*}; h=${pair#*:}
  if printf '#include <%s>\n' "$h" | g++ -std=c++17 -E -x c++ - >/dev/null 2>&1; then
    grep -q " $lib ✓" <<<"$seen" || fail "<$h> preprocesses but '$lib' is reported missing: $seen"
  else
    grep -q " $lib ✗" <<<"$seen" || fail "<$h> is missing but '$lib' is reported present: $seen"
  fi
done
make --no-print-directory check-headers >/dev/null || fail "check-headers fails with the headers present"
echo "check_makefile: detection and check-headers tell the truth"
