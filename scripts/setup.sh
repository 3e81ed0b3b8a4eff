#!/usr/bin/env bash
# Sets up a fresh Debian host for meshnode: Debian packages (bcc, headers, nftables, iproute2, tmux, bpftool for bench/,
# gcc for capture's C line renderer, promtool for the metrics tests, clickhouse-server and -client for the
# ClickHouse export's tests, which start their own server on loopback ports), dnsmasq-base and dig
# (bind9-dnsutils) for the DNS tests (a resolver on a loopback address; dnsmasq-base starts no service),
# kernel headers linked for bcc, tracefs mounted, a virtual environment with the project and its dev tools,
# and the generated protobuf package. Idempotent: a second run touches nothing that is already right.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages and links kernel headers).
  Fix: sudo make setup   (or run the same command as root)"
command -v apt-get >/dev/null || die "apt-get not found: meshnode's setup supports Debian and its derivatives.
  Fix: install bcc (python3-bpfcc), kernel headers, nftables, iproute2 and tmux by hand, then run 'make venv'"
[ -r /sys/kernel/btf/vmlinux ] || die "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing).
  Fix: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's stock kernels since 5.10 have it)"

need_pkgs=()
for p in python3-bpfcc bpfcc-tools bpftool nftables iproute2 tmux python3-venv gcc clickhouse-server clickhouse-client \
    dnsmasq-base bind9-dnsutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
kernel=$(uname -r)
if [ ! -e "/lib/modules/$kernel/build" ] && ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
  need_pkgs+=(linux-headers-amd64)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_pkgs[*]}"
  apt-get update -qq || die "apt-get update failed (see above); check /etc/apt/sources.list and the network"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
    || die "apt-get install ${need_pkgs[*]} failed (see above)"
fi

# promtool checks the metrics endpoint and deploy/prometheus-rules.yml (tests/integration/test_prometheus.py).
# Debian ships it only inside the `prometheus` server package, whose install starts a server on :9090 of every
# address; extract promtool alone from the package instead, so nothing listens.
if ! command -v promtool >/dev/null; then
  say "installing promtool (extracted from Debian's prometheus package; the server is not installed)"
  tmp=$(mktemp -d)
  (cd "$tmp" && chmod 777 . && apt-get download -q prometheus >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$tmp" && apt-get download -q prometheus >/dev/null); } \
    || die "apt-get download prometheus failed (see above); check /etc/apt/sources.list and the network"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x" || die "could not unpack $tmp/prometheus_*.deb"
  install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi

# bcc compiles BPF C against the running kernel's headers. Debian may not ship headers for this kernel;
# BPF code here reads only tracepoint arguments and helper results, so the distribution's headers do.
if [ ! -e "/lib/modules/$kernel/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  [ -n "$hdr" ] && [ -n "$common" ] || die "no kernel headers found under /usr/src.
  Fix: apt-get install linux-headers-amd64"
  mkdir -p "/lib/modules/$kernel"
  ln -sfn "$hdr" "/lib/modules/$kernel/build"
  ln -sfn "$common" "/lib/modules/$kernel/source"
  say "no headers for kernel $kernel: linked /lib/modules/$kernel/build -> $hdr and source -> $common"
  say "  (bcc needs headers to compile; meshnode's BPF reads no struct offsets, so other headers are safe)"
fi

if [ ! -e /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    && say "mounted tracefs at /sys/kernel/tracing (tracepoint formats live there)" \
    || die "tracefs is not mounted and could not be mounted at /sys/kernel/tracing"
fi

py=""
for cand in python3.11 python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import sys; raise SystemExit(sys.version_info[:2] != (3, 11))'; then
    py=$(command -v "$cand"); break
  fi
done
[ -n "$py" ] || die "Python 3.11 not found. Fix: apt-get install python3.11 python3.11-venv (Debian 12 ships it)"

if [ ! -x .venv/bin/python ]; then
  say "creating virtual environment .venv with $py"
  "$py" -m venv .venv || die "could not create .venv. Fix: apt-get install python3-venv"
fi
# Debian's bcc lives in dist-packages beside many other Debian modules; expose only the bcc package.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-bcc
ln -sfn /usr/lib/python3/dist-packages/bcc .venv/debian-bcc/bcc
echo "$PWD/.venv/debian-bcc" > "$site/debian-bcc.pth"
.venv/bin/python -c 'import bcc' 2>/dev/null || die "the bcc module does not import from .venv.
  Fix: apt-get install --reinstall python3-bpfcc"

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  say "installing meshnode and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]' || die "pip install failed (see above)"
  rm -f .venv/.installed-*; touch "$stamp"
fi
.venv/bin/python scripts/gen_protos.py
bash scripts/build_native.sh
say "ready: $(.venv/bin/python -c 'import bcc, grpc; print("bcc", getattr(bcc, "__version__", "?"), "grpc", grpc.__version__)')"
