#!/usr/bin/env bash
# The benchmark: s3mount side by side with s3fs, rclone mount and the direct client
# (s3mount-bench: the same aws-sdk-s3 without FUSE), on one private Garage server,
# at one or more network round-trip times.
#
#   scripts/bench.sh                          every workload, every tool, loopback
#   scripts/bench.sh W1 W5                    only these workloads
#   scripts/bench.sh --tools s3mount,direct   only these tools (s3mount, s3mount-bg, s3fs,
#                                             rclone, direct; s3mount-bg is s3mount with
#                                             --background-uploads, in W1, W4, W9, W10 only)
#   scripts/bench.sh --rtt 0,20               each workload at each round-trip time in ms:
#                                             0 talks to Garage on loopback, any other
#                                             through a delay proxy (default 0)
#   scripts/bench.sh --runs 1                 run each case once (default 3, median shown)
#   scripts/bench.sh --dir DIR                work in DIR and keep the logs there (default:
#                                             a new directory under $TMPDIR or /tmp, removed
#                                             at the end unless a case failed; ~17 GB)
#
# Workloads (wall clock in seconds, lower is better, unless said otherwise):
#   W1  cp a 1 GiB file into the mount, until the object is in the bucket
#   W2  cold sequential read of a 1 GiB object (fresh mount, page cache dropped)
#   W3  warm re-read of it through a fresh mount (s3mount: same --cache-dir)
#   W4  cp of 1,000 files of 4 KiB into a new directory, until all are in the bucket
#   W5  ls -l of a directory of 10,000 objects, cold
#   W6  1,000 preads of 4 KiB at random offsets (fixed seed) in a 1 GiB object, cold
#   W7  find over 100 directories x 100 files, cold
#   W8  peak RSS of each mount daemon during W1 and W2 (selecting W8 runs W1 and W2)
#   W1 and W2 also report the CPU time (user + system) the mount daemon spent on them
#   W9  tar xf of a source tree (100 dirs x 20 files of 1-16 KiB) into the mount, until
#       all 2,000 files are in the bucket
#   W10 rsync -a of that tree onto its copy in the mount (made by a first rsync, not
#       timed) through a fresh mount: finds nothing to send; also the files it sent
#   W11 ls -l of directories of 1,000, 10,000 and 100,000 objects, cold, in microseconds
#       per entry (the objects are written once per bucket; 100,000 take ~1 min each)
#   W12 four concurrent reads of four 256 MiB objects through one fresh mount, cold, in
#       MB/s in all (higher is better), and the daemon's peak RSS during them
#
# Each tool has its own bucket, every case its own fresh mount; cold workloads (and
# W3) drop the page cache first. W1, W4, W9 and W10 write new random data every time,
# as Garage stores blocks by content and skips writing a block it already has.
# With --rtt, every tool (and the direct client) reaches Garage through
# `s3mount-bench proxy`, which holds each direction of every connection for half
# the round trip; the setup and the checks that objects arrived go direct.
#
# The table goes to stdout, progress to stderr, logs to DIR/logs. A case that fails
# (a tool that cannot mount, hangs at unmount, or any step over its time limit) marks
# only that tool's cells "error" and the run goes on. Needs root (apt-get, mounts,
# drop_caches). Installs s3fs, rclone, fuse3 and Garage where missing; stops every
# server, proxy, mount and process it started, also on error or Ctrl-C. Everything
# with 3 runs at loopback takes about 35 minutes on 2 cores (plus the first build
# of Garage); each further round trip of 20 ms about 90 more. Other load on the
# machine skews the numbers.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh # free_port, stop_pidfile
cmdline=scripts/bench.sh
for a in "$@"; do
  if [[ $a =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then cmdline+=" $a"; else cmdline+=" $(printf '%q' "$a")"; fi
done

ALL_WORKLOADS=(W1 W2 W3 W4 W5 W6 W7 W8 W9 W10 W11 W12)
ALL_TOOLS=(s3mount s3mount-bg s3fs rclone direct)
# The workloads s3mount-bg runs: those that write.
BG_WORKLOADS=(W1 W4 W9 W10)
GIB=$((1 << 30))
W12_SIZE=$((256 << 20))
SEED=42
LIMIT=${BENCH_STEP_LIMIT:-600} # seconds any one step may take (the variable is for tests)
CASE_LIMIT=2400 # seconds one case (one workload, tool, round trip and run) may take
EXIT_LIMIT=120  # seconds a mount daemon may take to exit after its unmount
TREE_FILES=2000 # the tree of W9 and W10: 100 dirs x 20 files
W11_SIZES=(1000 10000 100000)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

workloads=()
tools=("${ALL_TOOLS[@]}")
rtts=(0)
work=
keep_work=
runs=3
while [ $# -gt 0 ]; do
  case $1 in
    W[1-9] | W1[0-2]) workloads+=("$1") ;;
    --tools) [ $# -ge 2 ] || { usage >&2; exit 2; }; IFS=, read -r -a tools <<< "$2"; shift ;;
    --tools=*) IFS=, read -r -a tools <<< "${1#--tools=}" ;;
    --rtt) [[ ${2:-} =~ ^[0-9]+(,[0-9]+)*$ ]] || { usage >&2; exit 2; }; IFS=, read -r -a rtts <<< "$2"; shift ;;
    --rtt=*) [[ ${1#--rtt=} =~ ^[0-9]+(,[0-9]+)*$ ]] || { usage >&2; exit 2; }; IFS=, read -r -a rtts <<< "${1#--rtt=}" ;;
    --dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; work=$2; keep_work=1; shift ;;
    --runs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }; runs=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ ${#workloads[@]} -gt 0 ] || workloads=("${ALL_WORKLOADS[@]}")
for t in "${tools[@]}"; do
  case $t in s3mount | s3mount-bg | s3fs | rclone | direct) ;; *) echo "bench.sh: unknown tool $t (tools: ${ALL_TOOLS[*]})" >&2; exit 2 ;; esac
done
# Each round trip once, as a plain number (020 is 20), in the order given.
unique_rtts=()
for r in "${rtts[@]}"; do
  r=$((10#$r))
  [[ " ${unique_rtts[*]} " == *" $r "* ]] || unique_rtts+=("$r")
done
rtts=("${unique_rtts[@]}")
selected() { local x=$1; shift; [[ " $* " == *" $x "* ]]; }
uses() { selected "$1" "${tools[@]}"; }
wants() { selected "$1" "${workloads[@]}"; }
# W8 is measured during W1 and W2.
if wants W8; then
  wants W1 || workloads+=(W1)
  wants W2 || workloads+=(W2)
fi
# The cases of a run, in order: W11 is one case per directory size.
run_order=()
for w in "${ALL_WORKLOADS[@]}"; do
  wants "$w" || continue
  case $w in
    W8) ;;
    W11) for n in "${W11_SIZES[@]}"; do run_order+=("W11-$n"); done ;;
    *) run_order+=("$w") ;;
  esac
done
# The results a case records (result names), all marked "error" if it fails.
declare -A CASE_RESULTS=(
  [W1]="W1 W8-W1 CPU-W1" [W2]="W2 W8-W2 CPU-W2" [W10]="W10 W10-sent" [W12]="W12 W12-rss"
)
case_results() { echo "${CASE_RESULTS[$1]:-$1}"; }
# The unit of a case's main result, for the progress lines.
unit() { case $1 in W11-*) echo "us per entry" ;; W12) echo MB/s ;; *) echo s ;; esac; }

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: run as root (it installs packages, mounts and drops the page cache)" >&2
  exit 1
fi

# ---------------------------------------------------------------- installation
missing=()
if uses s3fs && ! command -v s3fs > /dev/null; then missing+=(s3fs); fi
if uses rclone && ! command -v rclone > /dev/null; then missing+=(rclone); fi
if wants W10 && ! command -v rsync > /dev/null; then missing+=(rsync); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]}..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" > /dev/null
fi
scripts/install-deps.sh
scripts/garage.sh install
echo "Building s3mount and s3mount-bench..." >&2
cargo build --release --quiet --bin s3mount --bin s3mount-bench
target=${CARGO_TARGET_DIR:-target}

# ---------------------------------------------------------------- work directory
if [ -z "$work" ]; then
  work=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-bench.XXXXXX")
else
  mkdir -p "$work"
  work=$(cd "$work" && pwd)
fi
logs=$work/logs
mkdir -p "$work/bin" "$work/data" "$work/run" "$work/results" "$work/mnt" "$work/cache" "$logs"
free_kb=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
if [ "$free_kb" -lt $((17 * 1024 * 1024)) ]; then
  echo "bench.sh: $work has $((free_kb / 1024 / 1024)) GB free; the benchmark needs about 17 GB" >&2
  [ -n "$keep_work" ] || rm -rf "$work"
  exit 1
fi
# Copies, so that a rebuild during the run does not change what is measured.
cp "$target/release/s3mount" "$target/release/s3mount-bench" "$work/bin/"
bin=$work/bin

case_pid=
failed_cases=0
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$case_pid" ]; then
    echo >&2
    stop_case "$case_pid"
  fi
  release_mounts
  stop_proxies
  [ -d "$work/garage" ] && "$repo/scripts/garage.sh" stop "$work/garage"
  rm -rf "${work:?}"/{data,garage,cache,mnt,bin,run,s3fs.passwd}
  if [ $status -ne 0 ]; then
    echo "bench.sh: stopped (status $status); logs are in $logs" >&2
  elif [ -n "$keep_work" ]; then
    echo "Logs are in $logs" >&2
  elif [ "$failed_cases" -gt 0 ]; then
    echo "$failed_cases case(s) failed; logs are in $logs" >&2
  else
    rm -rf "${work:?}"
  fi
  exit $status
}

# Every process below PID, deepest first.
descendants() {
  local child
  for child in $(pgrep -P "$1" 2> /dev/null); do
    descendants "$child"
    echo "$child"
  done
}

# Stop a case's subshell and everything it started: its mounts (see below) and
# any command still running (TERM, then KILL after 5 s).
stop_case() {
  local pids=() left=() p i
  mapfile -t pids < <(descendants "$1")
  pids+=("$1")
  kill -TERM "${pids[@]}" 2> /dev/null
  release_mounts
  for i in $(seq 1 50); do
    left=()
    for p in "${pids[@]}"; do alive "$p" && left+=("$p"); done
    [ ${#left[@]} -gt 0 ] || break
    sleep 0.1
  done
  [ ${#left[@]} -eq 0 ] || kill -KILL "${left[@]}" 2> /dev/null
  wait "$1" 2> /dev/null
}

# Every mount is registered in $work/run/mount.* ("PID MOUNTPOINT") while it is up,
# so that both a failed case and the script's exit can take it down. Nothing here
# may fail under set -e: a registration left behind would fail the next case too.
release_mounts() {
  local f pid mnt i
  for f in "$work"/run/mount.*; do
    [ -e "$f" ] || continue
    pid='' mnt=''
    read -r pid mnt < "$f" || true
    [ -z "$mnt" ] || ! is_mounted "$mnt" || fusermount3 -uz "$mnt" 2> /dev/null || true
    if [ -n "$pid" ]; then
      kill "$pid" 2> /dev/null || true
      for i in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
      ! alive "$pid" || kill -9 "$pid" 2> /dev/null || true
    fi
    rm -f "$f"
  done
  return 0
}

# Every delay proxy is registered in $work/run/proxy.* (its PID) while it runs.
stop_proxies() {
  local f
  for f in "$work"/run/proxy.*; do
    [ -e "$f" ] || continue
    stop_pidfile "$f"
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- S3 server and proxies
buckets=()
for t in "${tools[@]}"; do buckets+=("bench-$t"); done
echo "Starting Garage..." >&2
scripts/garage.sh start "$work/garage" "${buckets[@]}" > /dev/null
# shellcheck disable=SC1091
source "$work/garage/env"
echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" > "$work/s3fs.passwd"
chmod 600 "$work/s3fs.passwd"
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
export RCLONE_CONFIG_BENCH_ENV_AUTH=false
export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export RCLONE_CONFIG_BENCH_REGION=$AWS_REGION
BENCH=$bin/s3mount-bench
# S3_ENDPOINT stays Garage's: s3mount-bench reaches it directly for the setup and
# the checks; what is measured uses $ENDPOINT, the current round trip's.
declare -A ENDPOINTS=()
for r in "${rtts[@]}"; do
  if [ "$r" = 0 ]; then
    ENDPOINTS[$r]=$S3_ENDPOINT
    continue
  fi
  echo "Starting the delay proxy for $r ms..." >&2
  proxy_log=$logs/proxy-$r.log
  "$BENCH" proxy --listen 127.0.0.1:0 --upstream "127.0.0.1:${S3_ENDPOINT##*:}" \
    --delay-ms "$r" > "$proxy_log" 2>&1 &
  echo $! > "$work/run/proxy.$!"
  for i in $(seq 1 100); do
    grep -q '^listening=' "$proxy_log" && break
    kill -0 $! 2> /dev/null || break
    sleep 0.1
  done
  addr=$(sed -n 's/^listening=\([^ ]*\).*/\1/p' "$proxy_log")
  [ -n "$addr" ] || { echo "bench.sh: the delay proxy did not start:" >&2; cat "$proxy_log" >&2; exit 1; }
  ENDPOINTS[$r]=http://$addr
done
# use_rtt MS: measure through that round trip from now on.
use_rtt() {
  RTT=$1
  ENDPOINT=${ENDPOINTS[$RTT]}
  export RCLONE_CONFIG_BENCH_ENDPOINT=$ENDPOINT
}

# ---------------------------------------------------------------- helpers
# The value of NAME in a line of name=value words.
field() { grep -o "$1=[^ ]*" <<< "$2" | cut -d= -f2; }
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# result NAME TOOL VALUE: one measurement of this round trip ($RTT) and run ($RUN).
result() { echo "$3" > "$work/results/$1.$2.rtt$RTT.run$RUN"; }
# Alive and not a zombie (a dead child stays visible to kill -0 until reaped).
alive() { [ -e "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2> /dev/null)" != Z ]; }
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
# A sync that a hung mount (of another tool, say) cannot hold up for long.
bounded_sync() {
  local pid i
  sync &
  pid=$!
  for i in $(seq 1 600); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    echo "sync did not finish within 60 s; going on without it" >&2
    return 0
  fi
  wait "$pid"
}
drop_caches() {
  bounded_sync
  echo 3 > /proc/sys/vm/drop_caches
}
# Run a step for at most LIMIT seconds.
bounded() {
  local status=0
  timeout -k 10 "$LIMIT" "$@" || status=$?
  [ $status -ne 124 ] && [ $status -ne 137 ] || echo "$1 ran over $LIMIT s and was stopped" >&2
  return $status
}
# A seed for new random bodies (see the top).
random_seed() { od -An -tu8 -N8 /dev/urandom | tr -d ' '; }

# mount_tool TOOL NAME [CACHE_DIR]: mount TOOL's bucket at $work/mnt/TOOL in the
# foreground of a background job, through $ENDPOINT; sets MNT, MOUNT_PID and
# MOUNT_LOG. Without CACHE_DIR the mount gets an empty cache directory of its own.
mount_tool() {
  local tool=$1 name=$2 cache=${3:-} i
  if [ -z "$cache" ]; then
    cache=$work/cache/$tool-$name-$RUN
    rm -rf "$cache"
  fi
  MNT=$work/mnt/$tool
  MOUNT_LOG=$logs/$name-$tool-$RTT-$RUN.mount.log
  mkdir -p "$MNT" "$cache"
  : > "$MOUNT_LOG"
  case $tool in
    s3mount | s3mount-bg)
      local extra=()
      [ "$tool" = s3mount ] || extra=(--background-uploads)
      "$bin/s3mount" "bench-$tool" "$MNT" --foreground "${extra[@]}" \
        --endpoint-url "$ENDPOINT" --region "$AWS_REGION" --force-path-style \
        --cache-dir "$cache" --log-file "$MOUNT_LOG" > "${MOUNT_LOG%.log}.stderr" 2>&1 &
      ;;
    s3fs)
      s3fs "bench-s3fs" "$MNT" -f -o passwd_file="$work/s3fs.passwd" \
        -o url="$ENDPOINT" -o use_path_request_style -o endpoint="$AWS_REGION" \
        >> "$MOUNT_LOG" 2>&1 &
      ;;
    rclone)
      env -u AWS_CA_BUNDLE rclone mount "bench:bench-rclone" "$MNT" \
        --vfs-cache-mode writes --cache-dir "$cache" >> "$MOUNT_LOG" 2>&1 &
      ;;
  esac
  MOUNT_PID=$!
  echo "$MOUNT_PID $MNT" > "$work/run/mount.$MOUNT_PID"
  for i in $(seq 1 300); do
    is_mounted "$MNT" && return 0
    if ! alive "$MOUNT_PID"; then
      echo "$tool exited before mounting:" >&2
      tail -n 20 "$MOUNT_LOG" "${MOUNT_LOG%.log}.stderr" 2> /dev/null >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$tool did not mount within 30 s" >&2
  return 1
}

# Peak RSS of the mount daemon so far, in MiB.
peak_rss() { awk '/^VmHWM:/ { printf "%d", $2 / 1024 }' "/proc/$MOUNT_PID/status"; }
# CPU time of the mount daemon so far (user + system), in clock ticks, and the
# seconds it spent since a count of ticks.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$MOUNT_PID/stat"; }
cpu_since() { awk -v a="$1" -v b="$(cpu_ticks)" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }'; }

# Unmount (retrying while busy), wait for the daemon to exit, and for s3mount record
# the number of S3 requests it logged at unmount as result NAME.s3mount.req.
unmount_tool() {
  local tool=$1 name=$2 i status=0
  for i in $(seq 1 40); do
    fusermount3 -u "$MNT" 2> /dev/null && break
    sleep 0.25
  done
  if is_mounted "$MNT"; then
    echo "cannot unmount $MNT" >&2
    return 1
  fi
  for i in $(seq 1 $((EXIT_LIMIT * 10))); do
    alive "$MOUNT_PID" || break
    sleep 0.1
  done
  if alive "$MOUNT_PID"; then
    echo "$tool did not exit within $EXIT_LIMIT s of its unmount" >&2
    return 1
  fi
  wait "$MOUNT_PID" || status=$?
  rm -f "$work/run/mount.$MOUNT_PID"
  # rclone and s3fs exit non-zero on a normal unmount in some versions; s3mount must not.
  if [[ $tool == s3mount* ]]; then
    [ $status -eq 0 ] || { echo "s3mount exited with status $status" >&2; return 1; }
    local n
    n=$(grep -o 'S3 requests: [0-9]*' "$MOUNT_LOG" | tail -n 1 | grep -o '[0-9]*$' || true)
    result "$name" "$tool.req" "${n:-?}"
  fi
}

# ---------------------------------------------------------------- data
if wants W2 || wants W3 || wants W6; then head -c $GIB /dev/urandom > "$work/data/read.bin"; fi
if wants W6; then "$BENCH" offsets $GIB 1000 4096 $SEED > "$work/data/offsets"; fi
if wants W12; then
  for i in 0 1 2 3; do head -c $W12_SIZE /dev/urandom > "$work/data/w12-$i.bin"; done
fi

# Objects a workload reads, written directly (not through a proxy) once per bucket.
setup_once() {
  local tool=$1 what=$2 bucket=bench-$1 i
  [ -e "$work/run/setup-$tool-$what" ] && return 0
  case $what in
    read) bounded "$BENCH" put "$work/data/read.bin" "$bucket" read/big.bin > /dev/null ;;
    w5) bounded "$BENCH" put-many "$bucket" w5/ 10000 1024 > /dev/null ;;
    w7) bounded "$BENCH" put-many "$bucket" w7/ 100 1024 --dirs 100 > /dev/null ;;
    w11-*) bounded "$BENCH" put-many "$bucket" "$what/" "${what#w11-}" 1024 --jobs 64 > /dev/null ;;
    w12)
      for i in 0 1 2 3; do
        bounded "$BENCH" put "$work/data/w12-$i.bin" "$bucket" "w12/$i.bin" > /dev/null
      done
      ;;
  esac
  touch "$work/run/setup-$tool-$what"
}

# Read FILE through the mount; fails unless all SIZE bytes came.
read_all() {
  local file=$1 size=$2 out
  out=$(bounded dd if="$file" of=/dev/null bs=1M 2>&1)
  grep -q "^$size bytes" <<< "$out" || { echo "read $file: $out" >&2; return 1; }
}
read_big() { read_all "$MNT/read/big.bin" $GIB; }

# ---------------------------------------------------------------- workloads
# Each case_W TOOL records result W TOOL and the other names in CASE_RESULTS.
# What a case writes goes under a name with the round trip and run in it.

# New random data (see the top), written back to disk before the clock starts.
fresh_file() {
  head -c $GIB /dev/urandom > "$work/data/w1.bin"
  bounded_sync
}
fresh_files() {
  rm -rf "$work/data/small"
  mkdir -p "$work/data/small"
  head -c $((1000 * 4096)) /dev/urandom | split -b 4096 -a 4 -d - "$work/data/small/f"
  bounded_sync
}
# The tree of W9 and W10 in $work/data/tree/src, and as $work/data/tree.tar: the
# same names and sizes every time, new bodies.
fresh_tree() {
  rm -rf "$work/data/tree" "$work/data/tree.tar"
  "$BENCH" tree "$work/data/tree/src" --dirs 100 --files 20 --min-size 1024 --max-size 16384 \
    --seed $SEED > /dev/null
  tar -cf "$work/data/tree.tar" -C "$work/data/tree" src
  bounded_sync
}

case_W1() {
  local tool=$1 bucket=bench-$1 key=w1-$RTT-$RUN.bin t0 c0 out
  fresh_file
  if [ "$tool" = direct ]; then
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" put "$work/data/w1.bin" "$bucket" "$key")
    bounded "$BENCH" wait "$bucket" "$key" $GIB --timeout "$LIMIT" > /dev/null
    result W1 "$tool" "$(seconds_since "$t0")"
    result W8-W1 "$tool" "$(field rss_mib "$out")"
    result CPU-W1 "$tool" "$(field cpu_s "$out")"
    return
  fi
  mount_tool "$tool" W1
  c0=$(cpu_ticks)
  t0=$EPOCHREALTIME
  bounded cp "$work/data/w1.bin" "$MNT/$key"
  bounded "$BENCH" wait "$bucket" "$key" $GIB --timeout "$LIMIT" > /dev/null
  result W1 "$tool" "$(seconds_since "$t0")"
  result CPU-W1 "$tool" "$(cpu_since "$c0")"
  result W8-W1 "$tool" "$(peak_rss)"
  unmount_tool "$tool" W1
}

case_W2() {
  local tool=$1 bucket=bench-$1 t0 c0 out
  setup_once "$tool" read
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" get "$bucket" read/big.bin /dev/null)
    result W2 "$tool" "$(seconds_since "$t0")"
    result W8-W2 "$tool" "$(field rss_mib "$out")"
    result CPU-W2 "$tool" "$(field cpu_s "$out")"
    return
  fi
  rm -rf "$work/cache/$tool-read"
  mount_tool "$tool" W2 "$work/cache/$tool-read"
  drop_caches
  c0=$(cpu_ticks)
  t0=$EPOCHREALTIME
  read_big
  result W2 "$tool" "$(seconds_since "$t0")"
  result CPU-W2 "$tool" "$(cpu_since "$c0")"
  result W8-W2 "$tool" "$(peak_rss)"
  unmount_tool "$tool" W2
  touch "$work/run/read-cached-$tool"
}

case_W3() {
  local tool=$1 bucket=bench-$1 t0
  setup_once "$tool" read
  if [ "$tool" = direct ]; then
    # No cache to be warm: the same download as W2.
    drop_caches
    t0=$EPOCHREALTIME
    bounded "$BENCH" --endpoint-url "$ENDPOINT" get "$bucket" read/big.bin /dev/null > /dev/null
    result W3 "$tool" "$(seconds_since "$t0")"
    return
  fi
  if [ ! -e "$work/run/read-cached-$tool" ]; then
    mount_tool "$tool" W3-prime "$work/cache/$tool-read"
    read_big
    unmount_tool "$tool" W3-prime
    touch "$work/run/read-cached-$tool"
  fi
  mount_tool "$tool" W3 "$work/cache/$tool-read"
  drop_caches
  t0=$EPOCHREALTIME
  read_big
  result W3 "$tool" "$(seconds_since "$t0")"
  unmount_tool "$tool" W3
}

case_W4() {
  local tool=$1 bucket=bench-$1 dir=w4-$RTT-$RUN t0
  if [ "$tool" = direct ]; then
    # put-many makes distinct bodies of its own; a new seed makes them new.
    t0=$EPOCHREALTIME
    bounded "$BENCH" --endpoint-url "$ENDPOINT" put-many "$bucket" "$dir/" 1000 4096 \
      --seed "$(random_seed)" > /dev/null
    bounded "$BENCH" wait-count "$bucket" "$dir/" 1000 --timeout "$LIMIT" > /dev/null
    result W4 "$tool" "$(seconds_since "$t0")"
    return
  fi
  fresh_files
  mount_tool "$tool" W4
  t0=$EPOCHREALTIME
  bounded cp -r "$work/data/small" "$MNT/$dir"
  bounded "$BENCH" wait-count "$bucket" "$dir/" 1000 --timeout "$LIMIT" > /dev/null
  result W4 "$tool" "$(seconds_since "$t0")"
  unmount_tool "$tool" W4
}

case_W5() {
  local tool=$1 bucket=bench-$1 t0 out n
  setup_once "$tool" w5
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" list "$bucket" w5/)
    result W5 "$tool" "$(seconds_since "$t0")"
    [ "$(field entries "$out")" = 10000 ] || { echo "list: $out" >&2; return 1; }
    return
  fi
  mount_tool "$tool" W5
  drop_caches
  t0=$EPOCHREALTIME
  bounded ls -l "$MNT/w5" > "$work/run/ls.out"
  result W5 "$tool" "$(seconds_since "$t0")"
  n=$(grep -c '^-' "$work/run/ls.out" || true)
  [ "$n" = 10000 ] || { echo "ls -l showed $n files, not 10000" >&2; return 1; }
  unmount_tool "$tool" W5
}

case_W6() {
  local tool=$1 bucket=bench-$1 t0
  setup_once "$tool" read
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    bounded "$BENCH" --endpoint-url "$ENDPOINT" random-reads "$bucket" read/big.bin 1000 4096 $SEED > /dev/null
    result W6 "$tool" "$(seconds_since "$t0")"
    return
  fi
  mount_tool "$tool" W6
  drop_caches
  t0=$EPOCHREALTIME
  bounded python3 - "$MNT/read/big.bin" "$work/data/offsets" << 'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for line in open(sys.argv[2]):
    off = int(line)
    if len(os.pread(fd, 4096, off)) != 4096:
        sys.exit(f"short read at {off}")
os.close(fd)
PY
  result W6 "$tool" "$(seconds_since "$t0")"
  unmount_tool "$tool" W6
}

case_W7() {
  local tool=$1 bucket=bench-$1 t0 out n
  setup_once "$tool" w7
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" walk "$bucket" w7/)
    result W7 "$tool" "$(seconds_since "$t0")"
    [ "$(field dirs "$out")/$(field files "$out")" = 100/10000 ] || { echo "walk: $out" >&2; return 1; }
    return
  fi
  mount_tool "$tool" W7
  drop_caches
  t0=$EPOCHREALTIME
  bounded find "$MNT/w7" > "$work/run/find.out"
  result W7 "$tool" "$(seconds_since "$t0")"
  n=$(wc -l < "$work/run/find.out")
  [ "$n" = 10101 ] || { echo "find printed $n paths, not 10101" >&2; return 1; }
  unmount_tool "$tool" W7
}

case_W9() {
  local tool=$1 bucket=bench-$1 dir=w9-$RTT-$RUN t0
  fresh_tree
  if [ "$tool" = direct ]; then
    t0=$EPOCHREALTIME
    bounded "$BENCH" --endpoint-url "$ENDPOINT" put-tree "$work/data/tree/src" "$bucket" "$dir/src/" > /dev/null
    bounded "$BENCH" wait-count "$bucket" "$dir/" $TREE_FILES --timeout "$LIMIT" > /dev/null
    result W9 "$tool" "$(seconds_since "$t0")"
    return
  fi
  mount_tool "$tool" W9
  mkdir "$MNT/$dir"
  t0=$EPOCHREALTIME
  # As a user would: the files get the user's owner, not the archive's.
  bounded tar --no-same-owner -xf "$work/data/tree.tar" -C "$MNT/$dir"
  bounded "$BENCH" wait-count "$bucket" "$dir/" $TREE_FILES --timeout "$LIMIT" > /dev/null
  result W9 "$tool" "$(seconds_since "$t0")"
  unmount_tool "$tool" W9
}

case_W10() {
  local tool=$1 bucket=bench-$1 dir=w10-$RTT-$RUN t0 out sent
  fresh_tree
  if [ "$tool" = direct ]; then
    # The tree, uploaded directly; what is timed is one recursive listing of it,
    # the sizes and dates a sync compares to find nothing to send.
    bounded "$BENCH" put-tree "$work/data/tree/src" "$bucket" "$dir/" > /dev/null
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" list --recursive "$bucket" "$dir/")
    result W10 "$tool" "$(seconds_since "$t0")"
    [ "$(field entries "$out")" = $TREE_FILES ] || { echo "list: $out" >&2; return 1; }
    return
  fi
  mount_tool "$tool" W10-first
  bounded rsync -a "$work/data/tree/src/" "$MNT/$dir/"
  bounded "$BENCH" wait-count "$bucket" "$dir/" $TREE_FILES --timeout "$LIMIT" > /dev/null
  unmount_tool "$tool" W10-first
  mount_tool "$tool" W10
  drop_caches
  t0=$EPOCHREALTIME
  bounded rsync -a --stats "$work/data/tree/src/" "$MNT/$dir/" > "$work/run/rsync.out"
  result W10 "$tool" "$(seconds_since "$t0")"
  sent=$(sed -n 's/^Number of regular files transferred: *//p' "$work/run/rsync.out" | tr -d ,)
  result W10-sent "$tool" "${sent:-?}"
  unmount_tool "$tool" W10
}

# case_W11 TOOL N: ls -l of a directory of N objects (W5's for 10,000).
case_W11() {
  local tool=$1 n=$2 bucket=bench-$1 what=w11-$2 t0 out seen
  [ "$n" != 10000 ] || what=w5
  setup_once "$tool" "$what"
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" list "$bucket" "$what/")
    result "W11-$n" "$tool" "$(per_entry "$t0" "$n")"
    [ "$(field entries "$out")" = "$n" ] || { echo "list: $out" >&2; return 1; }
    return
  fi
  mount_tool "$tool" "W11-$n"
  drop_caches
  t0=$EPOCHREALTIME
  bounded ls -l "$MNT/$what" > "$work/run/ls.out"
  result "W11-$n" "$tool" "$(per_entry "$t0" "$n")"
  seen=$(grep -c '^-' "$work/run/ls.out" || true)
  [ "$seen" = "$n" ] || { echo "ls -l showed $seen files, not $n" >&2; return 1; }
  unmount_tool "$tool" "W11-$n"
}
# Microseconds per entry for N entries listed since T0.
per_entry() { awk -v a="$1" -v b="$EPOCHREALTIME" -v n="$2" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }'; }

case_W12() {
  local tool=$1 bucket=bench-$1 t0 out i pids=() status=0
  setup_once "$tool" w12
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" --endpoint-url "$ENDPOINT" get-many "$bucket" w12/{0,1,2,3}.bin)
    result W12 "$tool" "$(mb_per_s "$t0" $((4 * W12_SIZE)))"
    result W12-rss "$tool" "$(field rss_mib "$out")"
    return
  fi
  mount_tool "$tool" W12
  drop_caches
  t0=$EPOCHREALTIME
  for i in 0 1 2 3; do
    read_all "$MNT/w12/$i.bin" $W12_SIZE &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || status=1; done
  [ $status -eq 0 ] || return 1
  result W12 "$tool" "$(mb_per_s "$t0" $((4 * W12_SIZE)))"
  result W12-rss "$tool" "$(peak_rss)"
  unmount_tool "$tool" W12
}
# MB/s (10^6 bytes) for BYTES moved since T0.
mb_per_s() { awk -v a="$1" -v b="$EPOCHREALTIME" -v n="$2" 'BEGIN { printf "%.0f", n / 1e6 / (b - a) }'; }

# Run one case (a workload, or W11-N) for one tool in a subshell of its own (so
# that set -e works in it), logging to $logs/CASE-TOOL-RTT-RUN.log. A failure
# marks all of the case's results for this tool "error", and the run goes on; a
# case over CASE_LIMIT is stopped and fails.
run_case() {
  local c=$1 tool=$2 log=$logs/$1-$2-$RTT-$RUN.log status=0 t0 name
  local fn=case_${c%%-*} args=()
  [[ $c != *-* ]] || args=("${c#*-}")
  printf '%-9s %-8s %4s ms run %s/%s: ' "$c" "$tool" "$RTT" "$RUN" "$runs" >&2
  (
    set -Eeuo pipefail
    # The failing command into the log, for failures that say nothing themselves.
    trap 'echo "bench.sh: failed (status $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
    trap 'set +e; release_mounts' EXIT
    "$fn" "$tool" "${args[@]}"
  ) > "$log" 2>&1 &
  case_pid=$!
  t0=$SECONDS
  while alive "$case_pid"; do
    if [ $((SECONDS - t0)) -ge $CASE_LIMIT ]; then
      echo "bench.sh: the case took over $CASE_LIMIT s; stopped" >> "$log"
      stop_case "$case_pid"
      break
    fi
    sleep 0.2
  done
  wait "$case_pid" 2> /dev/null || status=$?
  case_pid=
  if [ $status -eq 0 ] && [ -e "$work/results/$c.$tool.rtt$RTT.run$RUN" ]; then
    echo "$(cat "$work/results/$c.$tool.rtt$RTT.run$RUN") $(unit "$c")" >&2
  else
    echo "failed; $log says:" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
    for name in $(case_results "$c"); do result "$name" "$tool" error; done
    failed_cases=$((failed_cases + 1))
  fi
}

started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
t_start=$EPOCHREALTIME
for r in "${rtts[@]}"; do
  use_rtt "$r"
  for c in "${run_order[@]}"; do
    for RUN in $(seq 1 "$runs"); do
      for t in "${tools[@]}"; do
        [ "$t" != s3mount-bg ] || selected "${c%%-*}" "${BG_WORKLOADS[@]}" || continue
        run_case "$c" "$t"
      done
    done
  done
done

# ---------------------------------------------------------------- report
# The median of the runs of NAME for TOOL at round trip RTT (the lower one of the
# middle two for an even count: a value that was measured); "error" if one
# failed, "-" if none ran.
get() {
  local f values=()
  for f in "$work/results/$1.$2.rtt$3.run"*; do [ -e "$f" ] && values+=("$(cat "$f")"); done
  if [ ${#values[@]} -eq 0 ]; then
    echo "-"
  elif selected error "${values[@]}"; then
    echo error
  elif ! printf '%s\n' "${values[@]}" | grep -qvE '^[0-9]+(\.[0-9]+)?$'; then
    printf '%s\n' "${values[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
  else
    echo "?"
  fi
}
number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
nonzero() { number "$1" && awk -v a="$1" 'BEGIN { exit !(a > 0) }'; }
ratio() { if number "$1" && nonzero "$2"; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo "-"; fi; }
# The better of the peers' values of NAME at RTT: the lower, or with "more" the higher.
best_peer() {
  local best=- v t
  for t in s3fs rclone; do
    v=$(get "$1" "$t" "$2")
    number "$v" || continue
    if [ "$best" = - ] || awk -v a="$v" -v b="$best" -v more="$3" 'BEGIN { exit !(more ? a > b : a < b) }'; then best=$v; fi
  done
  echo "$best"
}
# The columns: each selected tool at each round trip, then the ratios and requests.
if [ ${#rtts[@]} -eq 1 ] && [ "${rtts[0]}" = 0 ]; then
  rtt_label() { :; }
  all_rtts=
else
  rtt_label() { echo " $1 ms"; }
  all_rtts=" ($(printf '%s, ' "${rtts[@]}" | sed 's/, $//') ms)"
fi
header="| workload |"
for t in "${ALL_TOOLS[@]}"; do
  uses "$t" || continue
  for r in "${rtts[@]}"; do header+=" $t$(rtt_label "$r") |"; done
done
uses s3mount && { uses s3fs || uses rclone; } && header+=" s3mount / best peer$all_rtts |"
uses s3mount && uses direct && header+=" s3mount / direct$all_rtts |"
uses s3mount && header+=" s3mount S3 requests$all_rtts |"
# "a, b" for the values of one cell at each round trip.
joined() {
  local out=$1
  shift
  for v in "$@"; do out+=", $v"; done
  echo "$out"
}
# row NAME TITLE [more|none]: one line of the table. Ratios are s3mount's value over
# the other's, or with "more" (higher is better) the other's over s3mount's, so that
# below 1 is always s3mount ahead; "none" leaves them out.
row() {
  local id=$1 title=$2 kind=${3:-less} line t r s peers=() directs=() reqs=()
  line="| $title |"
  for t in "${ALL_TOOLS[@]}"; do
    uses "$t" || continue
    for r in "${rtts[@]}"; do line+=" $(get "$id" "$t" "$r") |"; done
  done
  for r in "${rtts[@]}"; do
    s=$(get "$id" s3mount "$r")
    case $kind in
      less) peers+=("$(ratio "$s" "$(best_peer "$id" "$r" 0)")") directs+=("$(ratio "$s" "$(get "$id" direct "$r")")") ;;
      more) peers+=("$(ratio "$(best_peer "$id" "$r" 1)" "$s")") directs+=("$(ratio "$(get "$id" direct "$r")" "$s")") ;;
      none) peers+=(-) directs+=(-) ;;
    esac
    reqs+=("$(get "$id" s3mount.req "$r")")
  done
  uses s3mount && { uses s3fs || uses rclone; } && line+=" $(joined "${peers[@]}") |"
  uses s3mount && uses direct && line+=" $(joined "${directs[@]}") |"
  uses s3mount && line+=" $(joined "${reqs[@]}") |"
  echo "$line"
}
version() {
  local v
  v=$("$@" 2> /dev/null | head -n 1 || true)
  echo "${v:-not installed}"
}
commit=$(git -C "$repo" rev-parse --short HEAD 2> /dev/null || echo unknown)
git -C "$repo" diff --quiet HEAD 2> /dev/null || commit="$commit with uncommitted changes"

echo
echo "## s3mount benchmark"
echo
echo "Command: \`$cmdline\`"
echo "Date: $started; $runs run(s) of each case, the median shown; the whole run took $(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) / 60 }') min"
echo "Machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release), kernel $(uname -r)"
echo "Versions: s3mount $commit; $(version s3fs --version | sed 's/^Amazon Simple Storage Service File System/s3fs/'); $(version rclone version); Garage $(sed -n 's/^GARAGE_VERSION=//p' "$repo/scripts/garage.sh")"
echo
echo "$header"
columns=$(($(tr -cd '|' <<< "$header" | wc -c) - 1))
printf '|%s\n' "$(printf -- '---|%.0s' $(seq 1 "$columns"))"
declare -A TITLES=(
  [W1]="W1 cp 1 GiB into the mount, until in the bucket (s)"
  [W2]="W2 cold sequential read of 1 GiB (s)"
  [W3]="W3 warm re-read of 1 GiB, fresh mount (s)"
  [W4]="W4 cp 1,000 files of 4 KiB, until in the bucket (s)"
  [W5]="W5 ls -l of 10,000 objects, cold (s)"
  [W6]="W6 1,000 random 4 KiB preads in 1 GiB, cold (s)"
  [W7]="W7 find over 100 dirs x 100 files, cold (s)"
  [W9]="W9 tar xf of 2,000 files of 1-16 KiB, until in the bucket (s)"
  [W10]="W10 rsync -a of 2,000 files already there, cold (s)"
  [W12]="W12 4 concurrent cold reads of 256 MiB objects, in all (MB/s)"
)
for w in W1 W2 W3 W4 W5 W6 W7; do
  wants "$w" && row "$w" "${TITLES[$w]}"
done
if wants W8; then
  row W8-W1 "W8 peak RSS during W1 (MiB)"
  row W8-W2 "W8 peak RSS during W2 (MiB)"
fi
wants W1 && row CPU-W1 "W1 daemon CPU, user + system (s)"
wants W2 && row CPU-W2 "W2 daemon CPU, user + system (s)"
if wants W9; then row W9 "${TITLES[W9]}"; fi
if wants W10; then
  row W10 "${TITLES[W10]}"
  row W10-sent "W10 files that rsync sent again (files)" none
fi
if wants W11; then
  for n in "${W11_SIZES[@]}"; do
    row "W11-$n" "W11 ls -l of $(sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<< "$n") objects, cold (us per entry)"
  done
fi
if wants W12; then
  row W12 "${TITLES[W12]}" more
  row W12-rss "W12 peak RSS during W12 (MiB)"
fi
echo
echo "Ratios below 1 mean s3mount is ahead: faster, smaller, or for MB/s more (that ratio is the other's over s3mount's)."
echo "Times are wall clock, including process start (cp, dd, ls, find, tar, rsync, python3, s3mount-bench)."
echo "W1, W4 and W9 end when the bucket has every object (rclone uploads after close, by default 5 s later);"
echo "they and W10 write new random data each time, since Garage skips storing blocks it already has."
echo "direct is s3mount-bench: parallel multipart upload and ranged GETs (8 x 8 MiB), 32 PUTs in flight,"
echo "listings per directory (16 in flight for W7); its W3 repeats W2 (it has no cache), its W8, W12 RSS"
echo "and CPU are its own; its W9 is put-tree (32 PUTs in flight), its W10 one recursive listing of the"
echo "tree, its W12 four get-many downloads in one process. Daemon CPU is the mount daemon's (utime + stime)"
echo "from the start of the copy or read until the data is in the bucket or read."
if [ "${rtts[*]}" != 0 ]; then
  echo "N ms: every tool reached Garage through a proxy holding each direction for N/2 ms (0 ms: direct,"
  echo "on loopback); new connections cost no extra round trip there, as they would (with TLS, more) on S3."
fi
echo "Garage 2.5.0 answers a ranged GET of 4 KiB in ~30 ms but one of 64 KiB in ~3 ms (it does not set"
echo "TCP_NODELAY): that is most of direct's W6, which reads exactly 4 KiB; the mounts fetch larger blocks."
echo "s3mount-bg is s3mount with --background-uploads (close returns once the file is safe on local disk;"
echo "the upload follows), run only in W1, W4, W9 and W10; the ratios are those of s3mount with the default close."
echo "Requests are those s3mount logged at unmount, mount check included. '-': not run; 'error': see the logs."
