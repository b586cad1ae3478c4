#!/usr/bin/env bash
# The POSIX conformance suite pjdfstest (its Rust rewrite, from crates.io).
#
#   scripts/pjdfstest.sh install   build it into the tools directory if missing
#                                  (needs libacl1-dev) and print the binary's path
set -euo pipefail

VERSION=0.2.2
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount-tools}
BIN=$TOOLS/pjdfstest-$VERSION/bin/pjdfstest

case "${1:-}" in
  install)
    if [ ! -x "$BIN" ]; then
      echo "Building pjdfstest $VERSION into $TOOLS (once per machine)..." >&2
      mkdir -p "$TOOLS"
      cargo install pjdfstest --version "$VERSION" --locked --root "$TOOLS/pjdfstest-$VERSION" >&2
    fi
    echo "$BIN"
    ;;
  *) echo "usage: $0 install" >&2; exit 2 ;;
esac
