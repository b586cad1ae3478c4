#!/usr/bin/env bash
# The benchmark (scripts/bench/bench.py): s3mount against s3fs, rclone, mount-s3 and
# the direct client, on one private Garage. `scripts/bench.sh -h` tells how to run it.
exec python3 "$(dirname "$0")/bench/bench.py" "$@"
