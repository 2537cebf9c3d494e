#!/usr/bin/env bash
# The whole test suite in one command, on a fresh Debian machine with the Rust
# toolchain: installs what the tests need and is missing, then runs
# `cargo test` (unit tests, then the end-to-end suite against a real registry,
# a real containerd + runc and real clients). Arguments go to `cargo test`.
# Needs root (or sudo) only when a Debian package is missing.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

# Debian packages, each with what shows it is installed:
#   docker-registry          the real OCI registry the tests start on 127.0.0.1
#   buildah                  builds the compat images the tests push, as users build them
#   containerd runc          the backing runtime of the forwarding tests
#   gcc libc6-dev            static Linux programs (pause, hello) its pods run
#   clang lld wasi-libc libclang-rt-dev-wasm32
#                            the C fixtures (e2e/fixtures-c), compiled against wasi-libc
#   curl                     the download `cargo bench -- pull` compares pulls with
#   containernetworking-plugins iptables
#                            the CNI plugins (bridge, host-local, portmap) of the
#                            pod networking tests, and the rules portmap writes
#   dnsmasq-base             the DNS server those tests name in a pod's DNS config
#   nodejs npm               the SPDY client of the streaming tests (e2e/clients)
have() { command -v "$1" >/dev/null; }
have_file() { compgen -G "$1" >/dev/null; }
missing=()
have docker-registry || missing+=(docker-registry)
have buildah || missing+=(buildah)
have containerd || missing+=(containerd)
have runc || missing+=(runc)
have gcc || missing+=(gcc)
have_file "/usr/lib/*-linux-gnu/libc.a" || missing+=(libc6-dev)
have clang || missing+=(clang)
have wasm-ld || missing+=(lld)
have_file "/usr/lib/wasm32-wasi/libc.a" || missing+=(wasi-libc)
have_file "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" || missing+=(libclang-rt-dev-wasm32)
have curl || missing+=(curl)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
have iptables || [ -x /usr/sbin/iptables ] || missing+=(iptables)
have dnsmasq || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
have node || missing+=(nodejs)
have npm || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "test.sh: installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

# The wasm fixtures are Rust programs built by the tests: modules (wasip1)
# and components (wasip2).
installed_targets=$(rustup target list --installed)
for target in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$target" <<<"$installed_targets" || rustup target add "$target"
done

# Python clients: the ORAS client (pushes wasm artifacts), grpcio with its
# code generator (a real CRI client the tests drive the daemon with), and the
# official Kubernetes client (its websocket exec and port-forward code drives
# the streaming server).
python3 -c 'import oras.client, grpc, grpc_tools.protoc, kubernetes.stream' 2>/dev/null \
  || python3 -m pip install -q oras grpcio grpcio-tools kubernetes

# npm `spdy-transport` (pinned by e2e/clients/package-lock.json): the SPDY/3.1
# implementation the streaming tests drive exec, attach and port-forward with.
[ -d e2e/clients/node_modules/spdy-transport ] || npm ci --prefix e2e/clients --no-audit --no-fund

# wkg, the publishing tool for components.
command -v wkg >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/wkg" ] \
  || cargo install wkg --locked --version 0.16.1

exec cargo test "$@"
