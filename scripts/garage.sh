#!/usr/bin/env bash
# A local Garage S3 server for the demo and the tests.
#
#   scripts/garage.sh install          build Garage into the tools directory if missing
#   scripts/garage.sh start DIR [B..]  start a single-node server with its state in DIR,
#                                      on free loopback ports, with a test key and buckets
#                                      B.. (the key may also create buckets); writes the
#                                      settings to DIR/env and prints them
#   scripts/garage.sh stop DIR         stop the server started in DIR (by its process id)
#   scripts/garage.sh resume DIR       start a stopped server of DIR again, same ports and data
#
# Garage is built once per machine with cargo (about 10 minutes on 2 cores) into
# $S3MOUNT_TOOLS (default ~/.cache/s3mount-tools).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

GARAGE_VERSION=2.5.0
TOOLS=${S3MOUNT_TOOLS:-$HOME/.cache/s3mount-tools}
GARAGE=$TOOLS/garage-$GARAGE_VERSION/bin/garage
# A fixed test key (Garage key ids are GK + 24 hex digits, secrets 64 hex digits).
KEY_ID=GK5e3a0c1f2b4d6e8a9c7b1d3f
KEY_SECRET=6d1f0a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f
REGION=garage

install() {
  if [ -x "$GARAGE" ]; then return 0; fi
  echo "Building Garage $GARAGE_VERSION into $TOOLS (once per machine, about 10 minutes)..." >&2
  mkdir -p "$TOOLS"
  cargo install garage --version "$GARAGE_VERSION" --locked --root "$TOOLS/garage-$GARAGE_VERSION" >&2
}

start() {
  local dir=$1; shift
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local rpc s3 admin
  rpc=$(free_port); s3=$(free_port); admin=$(free_port)
  cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  echo "$s3" > "$dir/s3.port"
  local g=("$GARAGE" -c "$dir/garage.toml")
  run_server "$dir"
  local node
  node=$("${g[@]}" node id -q | cut -d@ -f1)
  "${g[@]}" layout assign -z dc1 -c 10G "$node" > /dev/null
  "${g[@]}" layout apply --version 1 > /dev/null
  "${g[@]}" key import --yes -n s3mount-test "$KEY_ID" "$KEY_SECRET" > /dev/null
  "${g[@]}" key allow --create-bucket s3mount-test > /dev/null
  local b
  for b in "$@"; do
    "${g[@]}" bucket create "$b" > /dev/null
    "${g[@]}" bucket allow --read --write --owner "$b" --key s3mount-test > /dev/null
  done
  wait_s3 "$s3"
  cat > "$dir/env" <<ENV
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$KEY_SECRET
export AWS_REGION=$REGION
export AWS_EC2_METADATA_DISABLED=true
export S3_ENDPOINT=http://127.0.0.1:$s3
export GARAGE_DIR=$dir
export GARAGE_PID=$(cat "$dir/garage.pid")
ENV
  cat "$dir/env"
}

# Start the server of DIR in the background and wait (bounded) until the node answers.
run_server() {
  local dir=$1
  local g=("$GARAGE" -c "$dir/garage.toml")
  RUST_LOG=warn "${g[@]}" server >> "$dir/garage.log" 2>&1 &
  echo $! > "$dir/garage.pid"
  wait_answering garage "$dir/garage.pid" "$dir/garage.log" "${g[@]}" status
}

# Wait (bounded) until the S3 API on PORT answers HTTP (any status).
wait_s3() {
  local port=$1 i
  for i in $(seq 1 150); do
    if python3 - "$port" 2>/dev/null <<'PY'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
except urllib.error.HTTPError:
    sys.exit(0)
except Exception:
    sys.exit(1)
PY
    then return 0; fi
    sleep 0.2
  done
  echo "the S3 API on port $port did not answer within 30 s" >&2; return 1
}

resume() {
  local dir=$1
  run_server "$dir"
  wait_s3 "$(cat "$dir/s3.port")"
}

stop() {
  stop_pidfile "$1/garage.pid"
}

case "${1:-}" in
  install) install ;;
  start) shift; [ $# -ge 1 ] || { echo "usage: $0 start DIR [BUCKET...]" >&2; exit 2; }; start "$@" ;;
  stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  resume) [ $# -eq 2 ] || { echo "usage: $0 resume DIR" >&2; exit 2; }; resume "$2" ;;
  *) echo "usage: $0 install | start DIR [BUCKET...] | stop DIR | resume DIR" >&2; exit 2 ;;
esac
