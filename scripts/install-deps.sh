#!/usr/bin/env bash
# Install what s3mount's tests and demo need from Debian, where missing: FUSE 3.
set -euo pipefail
missing=()
command -v fusermount3 > /dev/null || missing+=(fuse3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]}..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" > /dev/null
fi
if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2
  exit 1
fi
