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
# Optional: a failure is reported, not fatal (capture then renders in Python; its tests say so).
cc=$(command -v cc || command -v gcc || command -v gcc-12 || true)
if [ -z "$cc" ]; then
  echo "setup: warning: no C compiler (cc) to build $lib; capture --json will be slower. Fix: apt-get install gcc" >&2
elif "$cc" -O2 -Wall -Wextra -shared -fPIC -Iprobes -o "$lib.tmp" "$src"; then
  mv "$lib.tmp" "$lib"
  echo "setup: built $lib" >&2
else
  rm -f "$lib.tmp"
  echo "setup: warning: building $lib failed (above); capture --json will render in Python, slower" >&2
fi
