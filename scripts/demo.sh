#!/usr/bin/env bash
# The demo: build s3mount, start a local Garage S3 server, and mount its bucket
# "demo" at ./mnt.
#
#   scripts/demo.sh         start (prints how to use it and how to unmount)
#   scripts/demo.sh stop    unmount ./mnt and stop the server
set -euo pipefail
cd "$(dirname "$0")/.."
state=$PWD/.demo
mnt=$PWD/mnt

is_mounted() { awk -v m="$mnt" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

stop() {
  if is_mounted; then
    fusermount3 -u "$mnt"
    echo "Unmounted $mnt."
  fi
  scripts/garage.sh stop "$state/garage"
  rm -rf "$state"
  echo "Stopped the local S3 server."
}

start() {
  if is_mounted; then
    echo "$mnt is already mounted: run 'scripts/demo.sh stop' first." >&2
    exit 1
  fi
  scripts/install-deps.sh
  scripts/garage.sh install
  echo "Building s3mount..."
  cargo build --release --quiet
  rm -rf "$state"
  scripts/garage.sh start "$state/garage" demo > /dev/null
  # shellcheck disable=SC1091
  source "$state/garage/env"
  mkdir -p "$mnt"
  target/release/s3mount demo "$mnt" \
    --endpoint-url "$S3_ENDPOINT" --region "$AWS_REGION" --force-path-style \
    --cache-dir "$state/cache"
  echo "Hello from s3mount: this file is the object 'hello.txt' in bucket 'demo'." > "$mnt/hello.txt"
  cat <<MSG

Bucket 'demo' of a local S3 server ($S3_ENDPOINT) is mounted at ./mnt.

  ls -l mnt                 list it (hello.txt was written through the mount)
  cp README.md mnt/docs/    (mkdir mnt/docs first) files become objects on close
  cat mnt/hello.txt

Log: $state/cache/s3mount.log
Unmount and stop the server:   scripts/demo.sh stop
(or just unmount:              fusermount3 -u mnt)
MSG
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
