#!/usr/bin/env bash
# The benchmark: s3mount side by side with s3fs, rclone mount and the direct client
# (s3mount-bench: the same aws-sdk-s3 without FUSE), on one private Garage server.
#
#   scripts/bench.sh                          every workload, every tool
#   scripts/bench.sh W1 W5                    only these workloads
#   scripts/bench.sh --tools s3mount,direct   only these tools
#   scripts/bench.sh --runs 1                 run each case once (default 3, median shown)
#   scripts/bench.sh --dir DIR                work in DIR (default: a new directory
#                                             under $TMPDIR or /tmp; needs ~14 GB)
#
# Workloads (times are wall clock in seconds, lower is better):
#   W1  cp a 1 GiB file into the mount, until the object is in the bucket
#   W2  cold sequential read of a 1 GiB object (fresh mount, page cache dropped)
#   W3  warm re-read of it through a fresh mount (s3mount: same --cache-dir)
#   W4  cp of 1,000 files of 4 KiB into a new directory, until all are in the bucket
#   W5  ls -l of a directory of 10,000 objects, cold
#   W6  1,000 preads of 4 KiB at random offsets (fixed seed) in a 1 GiB object, cold
#   W7  find over 100 directories x 100 files, cold
#   W8  peak RSS of each mount daemon during W1 and W2 (selecting W8 runs W1 and W2)
#
# Each tool has its own bucket, every case its own fresh mount; cold workloads (and
# W3) drop the page cache first. W1 and W4 write new random data every time, as
# Garage stores blocks by content and skips writing a block it already has.
#
# The table goes to stdout, progress to stderr, logs stay in DIR/logs. Needs root
# (apt-get, mounts, drop_caches). Installs s3fs, rclone, fuse3 and Garage where
# missing; stops every server, mount and process it started, also on error or
# Ctrl-C. Everything with 3 runs takes about 10 minutes on 2 cores (plus the
# first build of Garage). Other load on the machine skews the numbers.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD
cmdline=scripts/bench.sh
for a in "$@"; do
  if [[ $a =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then cmdline+=" $a"; else cmdline+=" $(printf '%q' "$a")"; fi
done

ALL_WORKLOADS=(W1 W2 W3 W4 W5 W6 W7 W8)
ALL_TOOLS=(s3mount s3fs rclone direct)
GIB=$((1 << 30))
SEED=42
LIMIT=600 # seconds any one step may take

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

workloads=()
tools=("${ALL_TOOLS[@]}")
work=
runs=3
while [ $# -gt 0 ]; do
  case $1 in
    W[1-8]) workloads+=("$1") ;;
    --tools) [ $# -ge 2 ] || { usage >&2; exit 2; }; IFS=, read -r -a tools <<< "$2"; shift ;;
    --tools=*) IFS=, read -r -a tools <<< "${1#--tools=}" ;;
    --dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; work=$2; shift ;;
    --runs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }; runs=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ ${#workloads[@]} -gt 0 ] || workloads=("${ALL_WORKLOADS[@]}")
for t in "${tools[@]}"; do
  case $t in s3mount | s3fs | rclone | direct) ;; *) echo "bench.sh: unknown tool $t (tools: ${ALL_TOOLS[*]})" >&2; exit 2 ;; esac
done
selected() { local x=$1; shift; [[ " $* " == *" $x "* ]]; }
uses() { selected "$1" "${tools[@]}"; }
wants() { selected "$1" "${workloads[@]}"; }
# W8 is measured during W1 and W2.
if wants W8; then
  wants W1 || workloads+=(W1)
  wants W2 || workloads+=(W2)
fi
run_order=()
for w in "${ALL_WORKLOADS[@]}"; do
  [ "$w" = W8 ] || ! wants "$w" || run_order+=("$w")
done

if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: run as root (it installs packages, mounts and drops the page cache)" >&2
  exit 1
fi

# ---------------------------------------------------------------- installation
missing=()
if uses s3fs && ! command -v s3fs > /dev/null; then missing+=(s3fs); fi
if uses rclone && ! command -v rclone > /dev/null; then missing+=(rclone); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]}..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" > /dev/null
fi
scripts/install-deps.sh
scripts/garage.sh install
echo "Building s3mount and s3mount-bench..." >&2
cargo build --release --quiet

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
if [ "$free_kb" -lt $((15 * 1024 * 1024)) ]; then
  echo "bench.sh: $work has $((free_kb / 1024 / 1024)) GB free; the benchmark needs about 15 GB" >&2
  exit 1
fi
# Copies, so that a rebuild during the run does not change what is measured.
cp target/release/s3mount target/release/s3mount-bench "$work/bin/"
bin=$work/bin

case_pid=
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$case_pid" ]; then
    echo >&2
    pkill -TERM -P "$case_pid" 2> /dev/null
    kill "$case_pid" 2> /dev/null
    wait "$case_pid" 2> /dev/null
  fi
  release_mounts
  [ -d "$work/garage" ] && "$repo/scripts/garage.sh" stop "$work/garage"
  rm -rf "${work:?}"/{data,garage,cache,mnt,bin,run,s3fs.passwd}
  [ $status -eq 0 ] || echo "bench.sh: stopped (status $status); logs are in $logs" >&2
  exit $status
}

# Every mount is registered in $work/run/mount.* ("PID MOUNTPOINT") while it is up,
# so that both a failed workload and the script's exit can take it down.
release_mounts() {
  local f pid mnt i
  for f in "$work"/run/mount.*; do
    [ -e "$f" ] || continue
    read -r pid mnt < "$f"
    fusermount3 -uz "$mnt" 2> /dev/null
    kill "$pid" 2> /dev/null
    for i in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null
    rm -f "$f"
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- S3 server
buckets=()
for t in "${tools[@]}"; do buckets+=("bench-$t"); done
echo "Starting Garage..." >&2
scripts/garage.sh start "$work/garage" "${buckets[@]}" > /dev/null
# shellcheck disable=SC1091
source "$work/garage/env"
echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" > "$work/s3fs.passwd"
chmod 600 "$work/s3fs.passwd"
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other
export RCLONE_CONFIG_BENCH_ENV_AUTH=false RCLONE_CONFIG_BENCH_ENDPOINT=$S3_ENDPOINT
export RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export RCLONE_CONFIG_BENCH_REGION=$AWS_REGION

# ---------------------------------------------------------------- helpers
BENCH=$bin/s3mount-bench
# The value of NAME in a line of name=value words.
field() { grep -o "$1=[^ ]*" <<< "$2" | cut -d= -f2; }
seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# result NAME TOOL VALUE: one measurement of this run ($RUN).
result() { echo "$3" > "$work/results/$1.$2.$RUN"; }
# Alive and not a zombie (a dead child stays visible to kill -0 until reaped).
alive() { [ -e "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2> /dev/null)" != Z ]; }
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }
drop_caches() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
}
bounded() { timeout -k 10 "$LIMIT" "$@"; }

# mount_tool TOOL NAME [CACHE_DIR]: mount TOOL's bucket at $work/mnt/TOOL in the
# foreground of a background job; sets MNT, MOUNT_PID and MOUNT_LOG. Without
# CACHE_DIR the mount gets an empty cache directory of its own.
mount_tool() {
  local tool=$1 name=$2 cache=${3:-} i
  if [ -z "$cache" ]; then
    cache=$work/cache/$tool-$name-$RUN
    rm -rf "$cache"
  fi
  MNT=$work/mnt/$tool
  MOUNT_LOG=$logs/$name-$tool-$RUN.mount.log
  mkdir -p "$MNT" "$cache"
  : > "$MOUNT_LOG"
  case $tool in
    s3mount)
      "$bin/s3mount" "bench-s3mount" "$MNT" --foreground \
        --endpoint-url "$S3_ENDPOINT" --region "$AWS_REGION" --force-path-style \
        --cache-dir "$cache" --log-file "$MOUNT_LOG" > "${MOUNT_LOG%.log}.stderr" 2>&1 &
      ;;
    s3fs)
      s3fs "bench-s3fs" "$MNT" -f -o passwd_file="$work/s3fs.passwd" \
        -o url="$S3_ENDPOINT" -o use_path_request_style -o endpoint="$AWS_REGION" \
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
  for i in $(seq 1 $((LIMIT * 10))); do
    alive "$MOUNT_PID" || break
    sleep 0.1
  done
  if alive "$MOUNT_PID"; then
    echo "$tool did not exit within $LIMIT s of its unmount" >&2
    return 1
  fi
  wait "$MOUNT_PID" || status=$?
  rm -f "$work/run/mount.$MOUNT_PID"
  # rclone and s3fs exit non-zero on a normal unmount in some versions; s3mount must not.
  if [ "$tool" = s3mount ]; then
    [ $status -eq 0 ] || { echo "s3mount exited with status $status" >&2; return 1; }
    local n
    n=$(grep -o 'S3 requests: [0-9]*' "$MOUNT_LOG" | tail -n 1 | grep -o '[0-9]*$' || true)
    result "$name" s3mount.req "${n:-?}"
  fi
}

# ---------------------------------------------------------------- data
if wants W2 || wants W3 || wants W6; then head -c $GIB /dev/urandom > "$work/data/read.bin"; fi
if wants W6; then "$BENCH" offsets $GIB 1000 4096 $SEED > "$work/data/offsets"; fi

# Objects a workload reads, written with the direct client once per bucket.
setup_once() {
  local tool=$1 what=$2 bucket=bench-$1
  [ -e "$work/run/setup-$tool-$what" ] && return 0
  case $what in
    read) "$BENCH" put "$work/data/read.bin" "$bucket" read/big.bin > /dev/null ;;
    w5) "$BENCH" put-many "$bucket" w5/ 10000 1024 > /dev/null ;;
    w7) "$BENCH" put-many "$bucket" w7/ 100 1024 --dirs 100 > /dev/null ;;
  esac
  touch "$work/run/setup-$tool-$what"
}

# Read the 1 GiB object through the mount; fails unless every byte came.
read_big() {
  local out
  out=$(bounded dd if="$MNT/read/big.bin" of=/dev/null bs=1M 2>&1)
  grep -q "^$GIB bytes" <<< "$out" || { echo "read: $out" >&2; return 1; }
}

# ---------------------------------------------------------------- workloads
# Each case_W TOOL records result W TOOL (seconds); W1 and W2 also W8-W TOOL (MiB).

# New random data (see the top), written back to disk before the clock starts.
fresh_file() {
  head -c $GIB /dev/urandom > "$work/data/w1.bin"
  sync
}
fresh_files() {
  rm -rf "$work/data/small"
  mkdir -p "$work/data/small"
  head -c $((1000 * 4096)) /dev/urandom | split -b 4096 -a 4 -d - "$work/data/small/f"
  sync
}

case_W1() {
  local tool=$1 bucket=bench-$1 key=w1-$RUN.bin t0 out
  fresh_file
  if [ "$tool" = direct ]; then
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" put "$work/data/w1.bin" "$bucket" "$key")
    "$BENCH" wait "$bucket" "$key" $GIB --timeout "$LIMIT" > /dev/null
    result W1 "$tool" "$(seconds_since "$t0")"
    result W8-W1 "$tool" "$(field rss_mib "$out")"
    return
  fi
  mount_tool "$tool" W1
  t0=$EPOCHREALTIME
  bounded cp "$work/data/w1.bin" "$MNT/$key"
  "$BENCH" wait "$bucket" "$key" $GIB --timeout "$LIMIT" > /dev/null
  result W1 "$tool" "$(seconds_since "$t0")"
  result W8-W1 "$tool" "$(peak_rss)"
  unmount_tool "$tool" W1
}

case_W2() {
  local tool=$1 bucket=bench-$1 t0 out
  setup_once "$tool" read
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" get "$bucket" read/big.bin /dev/null)
    result W2 "$tool" "$(seconds_since "$t0")"
    result W8-W2 "$tool" "$(field rss_mib "$out")"
    return
  fi
  rm -rf "$work/cache/$tool-read"
  mount_tool "$tool" W2 "$work/cache/$tool-read"
  drop_caches
  t0=$EPOCHREALTIME
  read_big
  result W2 "$tool" "$(seconds_since "$t0")"
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
    bounded "$BENCH" get "$bucket" read/big.bin /dev/null > /dev/null
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
  local tool=$1 bucket=bench-$1 dir=w4-$RUN t0
  if [ "$tool" = direct ]; then
    # put-many makes distinct bodies of its own; the run number makes them new.
    t0=$EPOCHREALTIME
    bounded "$BENCH" put-many "$bucket" "$dir/" 1000 4096 --seed "$RUN" > /dev/null
    "$BENCH" wait-count "$bucket" "$dir/" 1000 --timeout "$LIMIT" > /dev/null
    result W4 "$tool" "$(seconds_since "$t0")"
    return
  fi
  fresh_files
  mount_tool "$tool" W4
  t0=$EPOCHREALTIME
  bounded cp -r "$work/data/small" "$MNT/$dir"
  "$BENCH" wait-count "$bucket" "$dir/" 1000 --timeout "$LIMIT" > /dev/null
  result W4 "$tool" "$(seconds_since "$t0")"
  unmount_tool "$tool" W4
}

case_W5() {
  local tool=$1 bucket=bench-$1 t0 out n
  setup_once "$tool" w5
  if [ "$tool" = direct ]; then
    drop_caches
    t0=$EPOCHREALTIME
    out=$(bounded "$BENCH" list "$bucket" w5/)
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
    bounded "$BENCH" random-reads "$bucket" read/big.bin 1000 4096 $SEED > /dev/null
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
    out=$(bounded "$BENCH" walk "$bucket" w7/)
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

# Run one workload for one tool in a subshell of its own (so that set -e works in
# it), logging to $logs/W-TOOL-RUN.log; a failure is recorded and the run goes on.
run_case() {
  local w=$1 tool=$2 log=$logs/$1-$2-$RUN.log
  printf '%s %-8s run %s/%s: ' "$w" "$tool" "$RUN" "$runs" >&2
  (
    set -euo pipefail
    trap release_mounts EXIT
    "case_$w" "$tool"
  ) > "$log" 2>&1 &
  case_pid=$!
  if wait "$case_pid"; then
    echo "$(cat "$work/results/$w.$tool.$RUN") s" >&2
  else
    echo "failed; $log says:" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
    result "$w" "$tool" error
  fi
  case_pid=
}

started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
t_start=$EPOCHREALTIME
for w in "${run_order[@]}"; do
  for RUN in $(seq 1 "$runs"); do
    for t in "${tools[@]}"; do run_case "$w" "$t"; done
  done
done

# ---------------------------------------------------------------- report
# The median of the runs of NAME for TOOL (the lower one of the middle two for an
# even count: a value that was measured); "error" if one failed, "-" if none ran.
get() {
  local f values=()
  for f in "$work/results/$1.$2".[0-9]*; do [ -e "$f" ] && values+=("$(cat "$f")"); done
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
ratio() { if number "$1" && number "$2" && [ "$2" != 0 ] && [ "$2" != 0.00 ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo "-"; fi; }
best_peer() {
  local best=- v t
  for t in s3fs rclone; do
    v=$(get "$1" "$t")
    number "$v" || continue
    if [ "$best" = - ] || awk -v a="$v" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$v; fi
  done
  echo "$best"
}
row() {
  local id=$1 title=$2 unit=$3 req=$4 cells=() t s
  for t in "${ALL_TOOLS[@]}"; do cells+=("$(get "$id" "$t")"); done
  s=${cells[0]}
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$title ($unit)" "${cells[@]}" \
    "$(ratio "$s" "$(best_peer "$id")")" "$(ratio "$s" "${cells[3]}")" "$req"
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
echo "| workload | s3mount | s3fs | rclone | direct | s3mount / best peer | s3mount / direct | s3mount S3 requests |"
echo "|---|---|---|---|---|---|---|---|"
titles=(
  "W1 cp 1 GiB into the mount, until in the bucket"
  "W2 cold sequential read of 1 GiB"
  "W3 warm re-read of 1 GiB, fresh mount"
  "W4 cp 1,000 files of 4 KiB, until in the bucket"
  "W5 ls -l of 10,000 objects, cold"
  "W6 1,000 random 4 KiB preads in 1 GiB, cold"
  "W7 find over 100 dirs x 100 files, cold"
)
for w in "${run_order[@]}"; do
  i=${w#W}
  row "$w" "${titles[$((i - 1))]}" s "$(get "$w" s3mount.req)"
done
if wants W8; then
  row W8-W1 "W8 peak RSS during W1" MiB -
  row W8-W2 "W8 peak RSS during W2" MiB -
fi
echo
echo "Times are wall clock, including process start (cp, dd, ls, find, python3, s3mount-bench)."
echo "W1 and W4 end when the bucket has every object (rclone uploads after close, by default 5 s later);"
echo "they write new random data each time, since Garage skips storing blocks it already has."
echo "direct is s3mount-bench: parallel multipart upload and ranged GETs (8 x 8 MiB), 32 PUTs in flight,"
echo "listings per directory (16 in flight for W7); its W3 repeats W2 (it has no cache), its W8 is its own peak RSS."
echo "Garage 2.5.0 answers a ranged GET of 4 KiB in ~30 ms but one of 64 KiB in ~3 ms (it does not set"
echo "TCP_NODELAY): that is most of direct's W6, which reads exactly 4 KiB; the mounts fetch larger blocks."
echo "Requests are those s3mount logged at unmount, mount check included. '-': not run; 'error': see the logs."
