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
#   scripts/garage.sh start-cluster DIR [B..]  three nodes (DIR/n1..n3), replication
#                                      factor 3; DIR/env talks to n1, DIR/nK/env to node K;
#                                      `stop DIR/nK` and `resume DIR/nK` stop and restart one
#   scripts/garage.sh stop-cluster DIR stop the three nodes of DIR
#   scripts/garage.sh add-bucket DIR B a bucket B (a global name, which the garage CLI
#                                      knows), all rights to the test key
#   scripts/garage.sh add-key DIR ID SECRET [BUCKET RIGHT..]  a key (GK + 24 hex
#                                      digits, 64 hex digits) on the server of DIR, with
#                                      the rights given (--read, --write, --owner) on
#                                      BUCKET, else none
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

# Write the configuration of a node in DIR (replication factor $2, RPC secret $3)
# on free loopback ports.
configure() {
  local dir=$1 replication=$2 secret=$3
  mkdir -p "$dir"
  local rpc s3 admin consistency=""
  rpc=$(free_port); s3=$(free_port); admin=$(free_port)
  [ "$replication" -gt 1 ] && consistency='consistency_mode = "consistent"'
  cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = $replication
$consistency
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  echo "$s3" > "$dir/s3.port"
}

# The test key, its right to make buckets, and buckets B.. with the garage CLI
# G...; then wait for the S3 API on PORT and write the settings to DIR/env.
provision() {
  local dir=$1 port=$2; shift 2
  local g=("$GARAGE" -c "$dir/garage.toml")
  "${g[@]}" key import --yes -n s3mount-test "$KEY_ID" "$KEY_SECRET" > /dev/null
  "${g[@]}" key allow --create-bucket s3mount-test > /dev/null
  local b
  for b in "$@"; do
    "${g[@]}" bucket create "$b" > /dev/null
    "${g[@]}" bucket allow --read --write --owner "$b" --key s3mount-test > /dev/null
  done
  wait_s3 "$port"
  write_env "$dir" "$port" "$(cat "$dir/garage.pid")"
  cat "$dir/env"
}

write_env() {
  cat > "$1/env" <<ENV
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$KEY_SECRET
export AWS_REGION=$REGION
export AWS_EC2_METADATA_DISABLED=true
export S3_ENDPOINT=http://127.0.0.1:$2
export GARAGE_DIR=$1
export GARAGE_PID=$3
ENV
}

start() {
  local dir=$1; shift
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  configure "$dir" 1 "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
  local g=("$GARAGE" -c "$dir/garage.toml")
  run_server "$dir"
  local node
  node=$("${g[@]}" node id -q | cut -d@ -f1)
  "${g[@]}" layout assign -z dc1 -c 10G "$node" > /dev/null
  "${g[@]}" layout apply --version 1 > /dev/null
  provision "$dir" "$(cat "$dir/s3.port")" "$@"
}

# Three nodes in DIR/n1..n3, replication factor 3, consistent mode; the settings
# in DIR/env talk to n1, each DIR/nK/env to node K. Stop and resume a node with
# `stop DIR/nK` and `resume DIR/nK`.
start_cluster() {
  local dir=$1; shift
  install
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local secret k
  secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  for k in 1 2 3; do
    configure "$dir/n$k" 3 "$secret"
    run_server "$dir/n$k"
  done
  local g=("$GARAGE" -c "$dir/n1/garage.toml")
  for k in 2 3; do
    "${g[@]}" node connect "$("$GARAGE" -c "$dir/n$k/garage.toml" node id -q)" > /dev/null
  done
  for k in 1 2 3; do
    "${g[@]}" layout assign -z "dc$k" -c 1G \
      "$("$GARAGE" -c "$dir/n$k/garage.toml" node id -q | cut -d@ -f1)" > /dev/null
  done
  "${g[@]}" layout apply --version 1 > /dev/null
  provision "$dir/n1" "$(cat "$dir/n1/s3.port")" "$@" > /dev/null
  for k in 2 3; do
    wait_s3 "$(cat "$dir/n$k/s3.port")"
    write_env "$dir/n$k" "$(cat "$dir/n$k/s3.port")" "$(cat "$dir/n$k/garage.pid")"
  done
  cp "$dir/n1/env" "$dir/env"
  cat "$dir/env"
}

stop_cluster() {
  local k
  for k in 1 2 3; do stop_pidfile "$1/n$k/garage.pid"; done
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
  start-cluster) shift; [ $# -ge 1 ] || { echo "usage: $0 start-cluster DIR [BUCKET...]" >&2; exit 2; }; start_cluster "$@" ;;
  stop-cluster) [ $# -eq 2 ] || { echo "usage: $0 stop-cluster DIR" >&2; exit 2; }; stop_cluster "$2" ;;
  start) shift; [ $# -ge 1 ] || { echo "usage: $0 start DIR [BUCKET...]" >&2; exit 2; }; start "$@" ;;
  stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  resume) [ $# -eq 2 ] || { echo "usage: $0 resume DIR" >&2; exit 2; }; resume "$2" ;;
  add-bucket) [ $# -eq 3 ] || { echo "usage: $0 add-bucket DIR BUCKET" >&2; exit 2; }
    "$GARAGE" -c "$2/garage.toml" bucket create "$3" > /dev/null
    "$GARAGE" -c "$2/garage.toml" bucket allow --read --write --owner "$3" --key s3mount-test > /dev/null ;;
  add-key) [ $# -ge 4 ] || { echo "usage: $0 add-key DIR ID SECRET [BUCKET RIGHT...]" >&2; exit 2; }
    "$GARAGE" -c "$2/garage.toml" key import --yes -n "key-$3" "$3" "$4" > /dev/null
    if [ $# -ge 6 ]; then
      "$GARAGE" -c "$2/garage.toml" bucket allow "${@:6}" "$5" --key "$3" > /dev/null
    fi ;;
  *) echo "usage: $0 install | start DIR [BUCKET...] | stop DIR | resume DIR | start-cluster DIR [BUCKET...] | stop-cluster DIR | add-bucket DIR BUCKET | add-key DIR ID SECRET [BUCKET RIGHT...]" >&2; exit 2 ;;
esac
