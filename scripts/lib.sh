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

# The conformance suites the POSIX end-to-end tests run against a real mount (pjdfstest, fsx),
# built from crates.io into $CAIRN_TOOLS/bin, outside the clone so every clone on this machine
# shares them.
export CAIRN_TOOLS=${CAIRN_TOOLS:-$HOME/.cache/cairn/tools}
PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2

# Installs pjdfstest and fsx (each only when its binary is missing or not the pinned version),
# creates the unprivileged user and group pjdfstest switches to, and exports CAIRN_PJDFSTEST and
# CAIRN_FSX (absolute paths) for the tests.
ensure_conformance_tools() {
  local sudo="" crate version bin
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  for spec in "pjdfstest $PJDFSTEST_VERSION" "fsx $FSX_VERSION"; do
    read -r crate version <<<"$spec"
    bin=$CAIRN_TOOLS/bin/$crate
    if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$crate $version" ]; then
      continue
    fi
    log "installing $crate $version from crates.io into $CAIRN_TOOLS"
    # A target directory of its own: the tools' dependencies must not disturb Cairn's build.
    CARGO_TARGET_DIR=$CAIRN_TOOLS/build cargo install --locked --force --quiet \
      --root "$CAIRN_TOOLS" --version "=$version" "$crate"
    [ "$("$bin" --version 2>/dev/null)" = "$crate $version" ] \
      || die "$crate $version did not install to $bin"
  done
  export CAIRN_PJDFSTEST=$CAIRN_TOOLS/bin/pjdfstest
  export CAIRN_FSX=$CAIRN_TOOLS/bin/fsx

  # pjdfstest's dummy users (its config names them): nobody/nogroup come with Debian, tests/tests
  # is ours.
  getent passwd nobody >/dev/null || die "user nobody is missing"
  getent group nogroup >/dev/null || $sudo groupadd nogroup
  getent group tests >/dev/null || $sudo groupadd tests
  if ! getent passwd tests >/dev/null; then
    log "creating the unprivileged user tests (pjdfstest and the permission tests run as it)"
    $sudo useradd --gid tests --no-create-home --home-dir / --shell /usr/sbin/nologin tests
  fi
}
