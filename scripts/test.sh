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

# Every mount of the suite logs at trace level into one directory and carries a
# session token, so that the logs can be searched for secrets afterwards.
export S3MOUNT_TEST_LOGS="$work/logs"
mkdir -p "$S3MOUNT_TEST_LOGS"
S3MOUNT_TEST_SESSION_TOKEN="session-token-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
export S3MOUNT_TEST_SESSION_TOKEN

echo "== cargo test"
cargo test --release -- --test-threads "${TEST_THREADS:-4}"

echo "== no secret in the logs"
logs=$(find "$S3MOUNT_TEST_LOGS" -type f | wc -l)
if [ "$logs" -eq 0 ]; then
  echo "no mount logs in $S3MOUNT_TEST_LOGS: the search below would prove nothing" >&2
  exit 1
fi
if grep -rlF -e "$AWS_SECRET_ACCESS_KEY" -e "$S3MOUNT_TEST_SESSION_TOKEN" "$S3MOUNT_TEST_LOGS"; then
  echo "the secret key or the session token is in the logs above" >&2
  exit 1
fi
echo "$logs logs, neither the secret key nor the session token in them"
