#!/usr/bin/env bash
# Where the daemon's CPU goes: a 2 GiB cp into a mount (see --size), a cold cat of it, and four
# cats of four 256 MiB objects at once (written by four cps first), each through a fresh mount of a private
# Garage, with wall time, the daemon's CPU seconds (user + system, from /proc) and
# its peak RSS (VmHWM).
#
#   scripts/profile.sh            the figures
#   scripts/profile.sh --perf     also a perf profile of the daemon in each step
#                                 (DIR/perf.STEP.data; `perf report -i FILE`), of
#                                 a build with line tables (cargo's "profiling"
#                                 profile: the release build keeps only symbols)
#   scripts/profile.sh --dir DIR  work in DIR (default: a new directory under /tmp;
#                                 needs ~7 GB, and 3 GB of /dev/shm for the sources)
#   scripts/profile.sh --size MIB the large file's size in MiB (default 2048): run
#                                 with 512 and 4096 to see whether throughput (MB/s)
#                                 falls as files grow
#   scripts/profile.sh --tool mount-s3  the same steps through mount-s3 instead
#                                 (scripts/mount-s3.sh builds it), for its figures
#
# Needs root (drop_caches) and Garage (scripts/garage.sh install); stops what it
# started, also on error or Ctrl-C. The benchmark against the peers is
# scripts/bench.sh; this is the profile its targets are explained with.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
repo=$PWD

perf=
work=
size_mib=2048
tool=s3mount
while [ $# -gt 0 ]; do
  case $1 in
    --perf) perf=1 ;;
    --dir) work=$2; shift ;;
    --size) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "profile.sh: --size needs MiB" >&2; exit 2; }; size_mib=$2; shift ;;
    --tool) [[ ${2:-} =~ ^(s3mount|mount-s3)$ ]] || { echo "profile.sh: --tool is s3mount or mount-s3" >&2; exit 2; }; tool=$2; shift ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
  esac
  shift
done
own=
if [ -z "$work" ]; then work=$(mktemp -d /tmp/s3mount-profile.XXXXXX); own=1; fi
mkdir -p "$work/mnt"
src=$(mktemp -d /dev/shm/s3mount-profile.XXXXXX)
pid=

cleanup() {
  if mountpoint -q "$work/mnt"; then fusermount3 -u "$work/mnt" || true; fi
  if [ -n "$pid" ]; then wait "$pid" 2>/dev/null || true; fi
  scripts/garage.sh stop "$work/garage" >/dev/null 2>&1 || true
  rm -rf "$src" "${work:?}/cache" "${work:?}/mnt" "${work:?}/garage"
  # A directory of its own goes too, unless it holds the profiles.
  if [ -n "$own" ] && [ -z "$perf" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

if [ "$tool" = mount-s3 ]; then
  mount_s3=$(scripts/mount-s3.sh install)
else
  build=release
  if [ -n "$perf" ]; then build=profiling; fi
  cargo build --profile "$build" --quiet --bin s3mount
fi
scripts/garage.sh install
scripts/garage.sh start "$work/garage" profile >/dev/null
# shellcheck disable=SC1091
source "$work/garage/env"
head -c $((size_mib << 20)) /dev/urandom > "$src/big"
for i in 0 1 2 3; do head -c $((256 << 20)) /dev/urandom > "$src/part$i"; done

mount_fresh() {
  rm -rf "$work/cache"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  if [ "$tool" = mount-s3 ]; then
    # Its defaults: no local cache, writes streamed; overwrites and deletes allowed.
    "$mount_s3" profile "$work/mnt" --endpoint-url "$S3_ENDPOINT" --region "$AWS_REGION" \
      --force-path-style --allow-overwrite --allow-delete --foreground > "$work/$1.log" 2>&1 &
  else
    "$repo/target/$build/s3mount" profile "$work/mnt" --endpoint-url "$S3_ENDPOINT" \
      --force-path-style --cache-dir "$work/cache" --foreground --log-file "$work/$1.log" &
  fi
  pid=$!
  for _ in $(seq 100); do mountpoint -q "$work/mnt" && return 0; sleep 0.1; done
  echo "profile.sh: the mount did not come up; see $work/$1.log" >&2
  exit 1
}

# step NAME BYTES COMMAND...: run COMMAND, which moves BYTES, through a fresh mount
# and print its figures.
step() {
  local name=$1 bytes=$2 prof='' start end
  shift 2
  mount_fresh "$name"
  if [ -n "$perf" ]; then
    perf record -F 499 -g -p "$pid" -o "$work/perf.$name.data" >/dev/null 2>&1 &
    prof=$!
  fi
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  local cpu rss
  cpu=$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$pid/stat")
  rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
  if [ -n "$prof" ]; then kill -INT "$prof"; wait "$prof" || true; fi
  fusermount3 -u "$work/mnt"
  wait "$pid" || true
  pid=
  printf '%-28s wall %6.2f s (%4.0f MB/s)   daemon CPU %6.2f s   peak RSS %4d MiB\n' \
    "$name" "$(echo "$end - $start" | bc)" "$(echo "$bytes / 1000000 / ($end - $start)" | bc -l)" "$cpu" "$rss"
}

write_big() { cp "$src/big" "$work/mnt/big"; }
write_four() { for i in 0 1 2 3; do cp "$src/part$i" "$work/mnt/part$i"; done; }
read_big() { cat "$work/mnt/big" > /dev/null; }
read_four() {
  local readers=()
  for i in 0 1 2 3; do cat "$work/mnt/part$i" > /dev/null & readers+=($!); done
  for r in "${readers[@]}"; do wait "$r"; done
}

if [ "$tool" = mount-s3 ]; then
  echo "$("$mount_s3" --version | head -1), $(nproc) cores"
else
  echo "s3mount $(git rev-parse --short HEAD), $(nproc) cores"
fi
step "cp $size_mib MiB in" $((size_mib << 20)) write_big
step "cp 4 x 256 MiB in" $((1 << 30)) write_four
step "cat $size_mib MiB, cold" $((size_mib << 20)) read_big
step "4 cats of 256 MiB, cold" $((1 << 30)) read_four
if [ -n "$perf" ]; then echo "perf profiles and logs: $work"; fi
