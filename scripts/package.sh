#!/usr/bin/env bash
# Build the Debian package of s3mount, target/debian/s3mount_VERSION_ARCH.deb:
#   /usr/bin/s3mount
#   /sbin/mount.fuse.s3mount            the mount helper (a link to s3mount), so that
#                                       `mount -t fuse.s3mount` and fstab lines work
#   /usr/share/man/man8/s3mount.8.gz    s3mount(8), made from the options' definitions
#   /usr/share/doc/s3mount/             the README, and s3mount@.service, an example
#                                       systemd unit
#
#   scripts/package.sh          build the package and print its path
#   sudo dpkg -i target/debian/s3mount_*.deb    install it (apt-get install -f for fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

cargo build --release --quiet --bin s3mount --bin s3mount-bench
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d "${TMPDIR:-/tmp}/s3mount-deb.XXXXXX")
trap 'rm -rf "$root"' EXIT

install -D -m 755 "$target/release/s3mount" "$root/usr/bin/s3mount"
mkdir -p "$root/sbin"
ln -s /usr/bin/s3mount "$root/sbin/mount.fuse.s3mount"
mkdir -p "$root/usr/share/man/man8"
"$target/release/s3mount-bench" man-page | gzip -9n > "$root/usr/share/man/man8/s3mount.8.gz"
doc=$root/usr/share/doc/s3mount
install -D -m 644 README.md "$doc/README.md"
cat > "$doc/s3mount@.service" <<'UNIT'
# An example: mount the bucket named by the instance at /srv/INSTANCE
# (systemctl enable --now s3mount@my-bucket). Credentials from
# /etc/s3mount/credentials (the format of ~/.aws/credentials, readable by root).
[Unit]
Description=s3mount %i on /srv/%i
Wants=network-online.target
After=network-online.target
Before=remote-fs.target

[Service]
Type=notify
ExecStartPre=/usr/bin/mkdir -p /srv/%i
ExecStart=/usr/bin/s3mount --foreground %i /srv/%i --cache-dir /var/cache/s3mount/%i --credentials-file /etc/s3mount/credentials
# Longer than --stop-timeout (60 s), so that s3mount ends the uploads itself.
TimeoutStopSec=90

[Install]
WantedBy=remote-fs.target
UNIT
cat > "$doc/copyright" <<'COPYRIGHT'
s3mount is licensed under the Apache License, Version 2.0;
on Debian systems see /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: s3mount
Version: $version
Architecture: $arch
Maintainer: s3mount developers <s3mount@localhost>
Depends: fuse3
Installed-Size: $size
Section: utils
Priority: optional
Description: mount an S3 bucket as a directory, with write-back and no data loss
 s3mount mounts an S3 bucket (or a prefix of one) with FUSE so that cp, rsync,
 tar and editors work on it. Objects stay plain objects; reads go through a
 local block cache; writes are staged on local disk and uploaded on close,
 and nothing written is lost when an upload fails or the daemon dies.
CONTROL

mkdir -p "$target/debian"
deb="$target/debian/s3mount_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" > /dev/null
echo "$deb"
