#!/usr/bin/env bash
# Builds meshnode/sensor/_jsonline.so, the C renderer of `meshnode capture --json`'s lines (loaded with
# ctypes: no Python headers needed), when it is missing or older than its sources. Without it capture
# renders the same lines in Python, slower (meshnode/sensor/_native.py).
set -euo pipefail
cd "$(dirname "$0")/.."
src=meshnode/sensor/_jsonline.c
lib=meshnode/sensor/_jsonline.so
if [ -e "$lib" ] && [ "$lib" -nt "$src" ] && [ "$lib" -nt probes/meshnode.h ]; then
  exit 0
fi
cc=$(command -v cc || command -v gcc || command -v gcc-12 || true)
[ -n "$cc" ] || { echo "setup: error: no C compiler (cc) to build $lib. Fix: apt-get install gcc" >&2; exit 1; }
"$cc" -O2 -Wall -Wextra -Werror -shared -fPIC -Iprobes -o "$lib.tmp" "$src"
mv "$lib.tmp" "$lib"
echo "setup: built $lib" >&2
