#!/usr/bin/env bash
# A local CloudFront API (moto's server) for the tests: there is no local CloudFront.
#
#   scripts/moto.sh install     make a virtualenv with moto in the tools directory if missing
#   scripts/moto.sh start DIR   start the server on a free loopback port, with its state
#                               in DIR; writes CLOUDFRONT_ENDPOINT to DIR/env and prints it
#   scripts/moto.sh stop DIR    stop the server started in DIR (by its process id)
#
# The virtualenv lives in $S3MOUNT_TOOLS (default ~/.cache/s3mount-tools).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

MOTO_VERSION=5.2.1
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount-tools}
VENV=$TOOLS/moto-$MOTO_VERSION
MOTO=$VENV/bin/moto_server

install() {
  if [ -f "$VENV/.installed" ]; then return 0; fi
  echo "Installing moto $MOTO_VERSION into $VENV (once per machine)..." >&2
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION" >&2
  touch "$VENV/.installed"
}

start() {
  local dir=$1 port
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  port=$(free_port)
  "$MOTO" -H 127.0.0.1 -p "$port" >> "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  wait_answering moto "$dir/moto.pid" "$dir/moto.log" python3 -c \
    'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "http://127.0.0.1:$port/moto-api/"
  echo "export CLOUDFRONT_ENDPOINT=http://127.0.0.1:$port" > "$dir/env"
  cat "$dir/env"
}

stop() {
  stop_pidfile "$1/moto.pid"
}

case "${1:-}" in
  install) install ;;
  start) [ $# -eq 2 ] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
  stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
