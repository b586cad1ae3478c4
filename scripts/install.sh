#!/usr/bin/env bash
# Install s3mount where a shell and mount(8) find it: the binary in PREFIX/bin and,
# as root, the mount helper /sbin/mount.fuse.s3mount linked to it, so that
# `mount -t fuse.s3mount` and /etc/fstab lines of type fuse.s3mount work.
#
#   scripts/install.sh                  build, install into /usr/local (as root)
#   scripts/install.sh --prefix DIR     install into DIR/bin, no mount helper
#   scripts/install.sh --uninstall      remove what an install put there
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
helper=/sbin/mount.fuse.s3mount
uninstall=
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }; prefix=$2; helper=; shift ;;
    --uninstall) uninstall=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$helper" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root to install into $prefix and $helper, or give --prefix" >&2
  exit 1
fi
if [ -n "$uninstall" ]; then
  [ -z "$helper" ] || [ ! -L "$helper" ] || rm -f "$helper"
  rm -f "$prefix/bin/s3mount"
  echo "Removed $prefix/bin/s3mount${helper:+ and $helper}."
  exit 0
fi
echo "Building s3mount..."
cargo build --release --quiet --bin s3mount
install -D -m 755 "${CARGO_TARGET_DIR:-target}/release/s3mount" "$prefix/bin/s3mount"
if [ -n "$helper" ]; then
  ln -sfn "$prefix/bin/s3mount" "$helper"
fi
echo "Installed $prefix/bin/s3mount${helper:+ and the mount helper $helper}."
