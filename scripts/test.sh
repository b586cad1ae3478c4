#!/usr/bin/env bash
# Run every check: formatting, clippy, unit tests, and integration tests that mount
# the filesystem with FUSE against a local Garage S3 server and a local CloudFront
# API (moto), started here and stopped at the end. Installs fuse3, Garage and moto
# where missing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
scripts/garage.sh install
scripts/moto.sh install
PJDFSTEST=$(scripts/pjdfstest.sh install)
export PJDFSTEST

work=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-test.XXXXXX")
cleanup() {
  scripts/garage.sh stop "$work/garage" || true
  scripts/moto.sh stop "$work/moto" || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings

echo "== starting Garage"
scripts/garage.sh start "$work/garage" > /dev/null
# shellcheck disable=SC1091
source "$work/garage/env"
echo "== starting moto (CloudFront API)"
scripts/moto.sh start "$work/moto" > /dev/null
# shellcheck disable=SC1091
source "$work/moto/env"

echo "== cargo test"
cargo test --release -- --test-threads "${TEST_THREADS:-4}"
