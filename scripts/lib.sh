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

# Links cairn, cairn-meta and cairn-chunk onto the PATH of new shells: /usr/local/bin as root,
# else ~/.local/bin (with a hint when that is not on the PATH); $CAIRN_LINK_DIR overrides. As
# root, also /sbin/mount.fuse.cairn, the helper `mount -t fuse.cairn` and /etc/fstab use.
install_links() {
  local dir=${CAIRN_LINK_DIR:-}
  if [ -z "$dir" ]; then
    if [ "$(id -u)" -eq 0 ]; then dir=/usr/local/bin; else dir=$HOME/.local/bin; fi
  fi
  mkdir -p "$dir"
  local b
  for b in cairn cairn-meta cairn-chunk; do
    ln -sfn "$BIN/$b" "$dir/$b"
  done
  if [ "$(id -u)" -eq 0 ] && [ -z "${CAIRN_LINK_DIR:-}" ]; then
    ln -sfn "$BIN/cairn" /sbin/mount.fuse.cairn
  fi
  case ":$PATH:" in
    *":$dir:"*) ;;
    *) log "cairn is linked into $dir, which is not on your PATH: add it (export PATH=\"$dir:\$PATH\")" ;;
  esac
}

# in_mount_table DIR: something is mounted at DIR, even a dead FUSE mount whose stat fails
# ("transport endpoint is not connected"), which `mountpoint -q` does not see.
in_mount_table() {
  local m=${1// /\\040}
  awk -v m="$m" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts
}

# cluster_json ADDRS: `cairn status --json` of the cluster at ADDRS, or nothing while it cannot
# answer. Captured whole and never piped into a reader that may stop early, and its exit status
# (the health verdict: 1 for a warning) ignored: the callers look at the JSON.
cluster_json() { "$BIN/cairn" status --json --meta "$1" 2>/dev/null || true; }

# has_leader ADDRS: the cluster at ADDRS has a meta leader.
has_leader() { [[ "$(cluster_json "$1")" == *'"leader"'* ]]; }

# chunk_servers_up ADDRS: how many chunk servers the cluster at ADDRS counts as up.
chunk_servers_up() {
  local json; json=$(cluster_json "$1")
  grep -o '"state": *"up"' <<<"$json" | wc -l || true  # none found: 0, not a failure
}

# promtool (Prometheus's checker of metrics text and alert rules), for the tests of
# packaging/prometheus/: unpacked from Debian's prometheus package into $CAIRN_TOOLS, not
# installed, so no Prometheus server is set up or started. Exports CAIRN_PROMTOOL.
ensure_promtool() {
  local dir=$CAIRN_TOOLS/prometheus
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    log "unpacking promtool from Debian's prometheus package into $dir"
    local sudo="" tmp
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
      $sudo apt-get update -qq
      (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
    fi
    mkdir -p "$dir"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
    rm -rf "$tmp"
  fi
  [ -x "$dir/usr/bin/promtool" ] || die "promtool did not unpack to $dir"
  export CAIRN_PROMTOOL=$dir/usr/bin/promtool
}

# A headless Chromium for the test of the meta leader's status page (Debian's
# chromium-headless-shell). Exports CAIRN_CHROMIUM.
ensure_chromium() {
  if ! command -v chromium-headless-shell >/dev/null; then
    log "installing chromium-headless-shell (the status page test loads the page in it)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium-headless-shell >/dev/null
  fi
  CAIRN_CHROMIUM=$(command -v chromium-headless-shell)
  export CAIRN_CHROMIUM
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
