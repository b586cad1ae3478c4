"""Small programs the workloads run as steps of their own (bounded and timed like
cp or dd):

  helpers.py preads FILE OFFSETS      a pread of 4 KiB at each offset in OFFSETS (one a line)
  helpers.py read-files SIZE FILE...  read each FILE whole; each must have SIZE bytes
  helpers.py stream SIZE              SIZE bytes of data Garage cannot deduplicate on stdout,
                                      fast: a 256 MiB random buffer, each pass over it
                                      rotated by a new odd offset, so that no 4 KiB-aligned
                                      block repeats
"""

import os
import sys

MIB = 1 << 20


def preads(path, offsets):
    fd = os.open(path, os.O_RDONLY)
    with open(offsets) as f:
        for line in f:
            off = int(line)
            if len(os.pread(fd, 4096, off)) != 4096:
                sys.exit(f"short read at {off}")
    os.close(fd)


def read_files(size, paths):
    for path in paths:
        n = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                n += len(chunk)
        if n != size:
            sys.exit(f"{path}: {n} bytes, not {size}")


def stream(size):
    span = min(256 * MIB, -(-size // MIB) * MIB)
    buf = memoryview(os.urandom(span))
    left = size
    k = 0
    try:
        while left > 0:
            # Pass k starts at an offset no earlier pass started at, modulo any
            # power of two up to 1 MiB; the object's blocks all differ.
            start = (k * 1_000_003) % span
            for piece in (buf[start:], buf[:start]):
                pos = 0
                while pos < len(piece) and left > 0:
                    chunk = piece[pos:pos + min(MIB, left, len(piece) - pos)]
                    written = os.write(1, chunk)
                    pos += written
                    left -= written
            k += 1
    except BrokenPipeError:
        sys.exit(1)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "preads":
        preads(args[0], args[1])
    elif cmd == "read-files":
        read_files(int(args[0]), args[1:])
    elif cmd == "stream":
        stream(int(args[0]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
