#!/usr/bin/env bash
# The random-operation test through a real mount, for longer than CI affords.
#
#   scripts/soak.sh SECONDS        run the mount test's size classes and directory test with fresh
#                                  seeds for SECONDS, against a Garage started here;
#                                  prints the operations run, seeds tried and failures
#   scripts/soak.sh --faults SECONDS  the same through the fault proxy (8% of the
#                                  requests fail, every kind mixed: small and
#                                  multipart files, directories); prints the faults by kind too
#   scripts/soak.sh --replay FILE  run one saved case again (a failure prints its file:
#                                  target/tmp/model-failures/NAME-SEED.json); a case
#                                  whose name starts with core- runs on the core alone
#
# A failure is shrunk to the shortest sequence that still fails and saved; copy it
# into tests/model-cases/mount/ (or core/) to keep it as a regression case.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 [--faults] SECONDS | --replay FILE" >&2; exit 2; }
[ $# -ge 1 ] || usage
tests=(_match_the_model -- --skip through_faults)
if [ "$1" = --faults ]; then
  tests=(_match_the_model_through_faults --)
  shift
  [ $# -ge 1 ] || usage
fi

if [ "$1" = --replay ]; then
  [ $# -eq 2 ] || usage
  file=$(realpath "$2")
  if [[ $(basename "$file") == core-* ]]; then
    S3MOUNT_REPLAY=$file exec cargo test --release --test model_core saved_cases_pass -- --nocapture
  fi
fi
if [ "$1" != --replay ] && ! [[ $1 =~ ^[0-9]+$ ]]; then usage; fi

scripts/install-deps.sh
scripts/garage.sh install
work=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-soak.XXXXXX")
cleanup() {
  scripts/garage.sh stop "$work/garage" || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/garage.sh start "$work/garage" > /dev/null
# shellcheck disable=SC1091
source "$work/garage/env"

if [ "$1" = --replay ]; then
  S3MOUNT_REPLAY=$file cargo test --release --test model_mount saved_cases_pass -- --nocapture
  exit
fi

cargo build --release --tests
status=0
S3MOUNT_SOAK_SECONDS=$1 cargo test --release --test model_mount "${tests[@]}" \
  --test-threads 4 --nocapture 2>&1 | tee "$work/log" || status=$?
# Each size class ends with "NAME: S seeds, O operations, F failures".
grep -E '^(mount|faults)-[a-z]+: [0-9]+ seeds' "$work/log" | awk '
  { seeds += $2; ops += $4; failures += $6 }
  END { printf "soak: %d operations, %d seeds, %d failures\n", ops, seeds, failures }'
grep -E '^faults injected:' "$work/log" || true
exit "$status"
