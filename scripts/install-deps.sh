#!/usr/bin/env bash
# Install from Debian what s3mount needs, where missing.
#
#   scripts/install-deps.sh        FUSE 3 (the demo)
#   scripts/install-deps.sh test   also the programs the integration tests drive
#                                  (vim, nano, emacs, tmux, rsync, setfattr,
#                                  setfacl, openssl, man), libacl for
#                                  building the POSIX conformance suite, and
#                                  python3-venv for moto
set -euo pipefail
missing=()
need() { command -v "$1" > /dev/null || missing+=("$2"); }
need fusermount3 fuse3
if [ "${1:-}" = test ]; then
  need vim vim
  need nano nano
  need emacs emacs-nox
  need tmux tmux
  need rsync rsync
  need setfattr attr
  need setfacl acl
  need openssl openssl
  need man man-db
  [ -e /usr/include/sys/acl.h ] || missing+=(libacl1-dev)
  # moto, the CloudFront API of the tests, goes in a virtualenv.
  python3 -c 'import ensurepip, venv' 2> /dev/null || missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${missing[*]}..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: this machine cannot mount FUSE filesystems" >&2
  exit 1
fi
