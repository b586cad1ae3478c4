"""Small programs the workloads run as steps of their own (bounded and timed like
cp or dd):

  helpers.py preads FILE OFFSETS      a pread of 4 KiB at each offset in OFFSETS (one a line)
"""

import os
import sys

def preads(path, offsets):
    fd = os.open(path, os.O_RDONLY)
    with open(offsets) as f:
        for line in f:
            off = int(line)
            if len(os.pread(fd, 4096, off)) != 4096:
                sys.exit(f"short read at {off}")
    os.close(fd)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "preads":
        preads(args[0], args[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
