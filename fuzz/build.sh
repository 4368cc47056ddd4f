#!/usr/bin/env bash
# Build the libFuzzer targets into OUTDIR (default: fuzz/out):
#   fuzz_translate  the engine: parse, conntrack, NAT manip (csrc/ without the data path)
#   fuzz_frame      the data path's frame input: Ethernet, ARP, NDP, then the engine
# with AddressSanitizer and UndefinedBehaviorSanitizer, every UB report fatal.
#
#   fuzz/build.sh [OUTDIR]      build
#   fuzz/build.sh --probe       exit 0 when a clang that can link libFuzzer is installed
#   HYPERPLANE_CSRC=DIR fuzz/build.sh OUTDIR   build against another copy of csrc/
#
# The compiler is $CC when set, else the first of clang, clang-19 ... clang-14 found. On Debian
# bookworm: apt-get install clang-14 libclang-rt-14-dev (the runtime carries libFuzzer).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="${HYPERPLANE_CSRC:-$here/../csrc}"  # another copy of csrc/ (tests/engine/test_fuzz.py: a mutant)

find_cc() {
    if [ -n "${CC:-}" ]; then echo "$CC"; return; fi
    for c in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
        if command -v "$c" >/dev/null 2>&1; then echo "$c"; return; fi
    done
    return 1
}

flags=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -fno-omit-frame-pointer -Wall -Wno-unused-function -I"$src")

if [ "${1:-}" = "--probe" ]; then
    cc=$(find_cc) || { echo "no clang found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$tmp/p.c"
    if ! "$cc" "${flags[@]}" "$tmp/p.c" -o "$tmp/p" 2>"$tmp/err"; then
        echo "$cc cannot link -fsanitize=fuzzer (install libclang-rt-<version>-dev):" >&2
        head -n 3 "$tmp/err" >&2
        exit 1
    fi
    echo "$cc"
    exit 0
fi

out="${1:-$here/out}"
mkdir -p "$out"
cc=$(find_cc) || { echo "no clang found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 1; }

# The engine: every csrc file except the I/O (hp_io.c), the data path (hp_dp*.c) and the
# neighbour cache (hp_neigh*.c), so a new engine file is picked up without editing this script.
engine=()
dp=()
for f in "$src"/*.c; do
    case "$(basename "$f")" in hp_io.c|hp_dp*.c|hp_neigh*.c) dp+=("$f") ;; *) engine+=("$f") ;; esac
done
"$cc" "${flags[@]}" "$here/fuzz_translate.c" "${engine[@]}" -lm -o "$out/fuzz_translate"
# fuzz_frame: everything (it calls the data path's frame input, declared in hp_dp_internal.h).
"$cc" "${flags[@]}" "$here/fuzz_frame.c" "${engine[@]}" "${dp[@]}" -lm -o "$out/fuzz_frame"
echo "built $out/fuzz_translate $out/fuzz_frame with $cc"
