#!/usr/bin/env bash
# mount-s3 (Mountpoint for Amazon S3), the peer the benchmarks measure s3mount against.
#
#   scripts/mount-s3.sh install   build it into the tools directory if missing (its C
#                                 runtime needs cmake, clang and libfuse 2, installed
#                                 from Debian where missing); prints the binary's path
#
# Built once per machine from ../shared/peers/mount-s3 (crates.io sources of
# mount-s3 1.24; S3MOUNT_MOUNT_S3_SRC overrides it), about 8 minutes on 2 cores,
# into $S3MOUNT_TOOLS (default ~/.cache/s3mount-tools). Not part of s3mount.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.24.0
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount-tools}
BIN=$TOOLS/mount-s3-$VERSION/bin/mount-s3
SRC=${S3MOUNT_MOUNT_S3_SRC:-../shared/peers/mount-s3}

install() {
  if [ -x "$BIN" ]; then echo "$BIN"; return 0; fi
  if [ ! -f "$SRC/Cargo.toml" ]; then
    echo "mount-s3.sh: no mount-s3 sources in $SRC (set S3MOUNT_MOUNT_S3_SRC)" >&2
    exit 1
  fi
  local missing=()
  command -v cmake > /dev/null || missing+=(cmake)
  command -v clang > /dev/null || missing+=(clang libclang-dev)
  [ -e /usr/include/fuse/fuse.h ] || missing+=(libfuse-dev)
  command -v pkg-config > /dev/null || missing+=(pkg-config)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]}..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
  fi
  echo "Building mount-s3 $VERSION into $TOOLS (once per machine, about 8 minutes)..." >&2
  local target
  target=$(mktemp -d "${TMPDIR:-/tmp}/mount-s3-build.XXXXXX")
  cargo build --release --locked --manifest-path "$SRC/Cargo.toml" --target-dir "$target" >&2
  mkdir -p "$(dirname "$BIN")"
  cp "$target/release/mount-s3" "$BIN"
  rm -rf "$target"
  echo "$BIN"
}

case ${1:-} in
  install) install ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
esac
