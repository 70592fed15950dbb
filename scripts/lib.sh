# Shared by scripts/up, scripts/down and scripts/test. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# One target directory outside the clone, shared by `scripts/up`, `scripts/test` and CI: RocksDB
# takes ~15 minutes to compile on 2 cores, so every fresh clone on this machine reuses the build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}
BIN=$CARGO_TARGET_DIR/release
STATE=${CAIRN_STATE_DIR:-$ROOT/.cairn}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages the build and the mount need, only when something is missing.
ensure_system_packages() {
  local need=()
  command -v fusermount3 >/dev/null || need+=(fuse3)
  command -v protoc >/dev/null || need+=(protobuf-compiler)
  command -v clang >/dev/null || need+=(clang)
  [ -n "$(ls /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null | head -n1)" ] || need+=(libclang-dev)
  command -v pkg-config >/dev/null || need+=(pkg-config)
  command -v cc >/dev/null || need+=(build-essential)
  command -v diff >/dev/null || need+=(diffutils)
  command -v mountpoint >/dev/null || need+=(util-linux)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing system packages: ${need[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  [ -e /dev/fuse ] || die "/dev/fuse is missing: this machine cannot mount FUSE file systems"
  command -v cargo >/dev/null || die "cargo is missing: install a Rust toolchain (rustup) first"
}

build_release() {
  log "building (cargo build --release, target dir $CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --release --workspace --bins --locked)
}

# pid_alive FILE: the pid in FILE names a running process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
