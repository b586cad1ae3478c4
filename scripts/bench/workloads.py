"""The workloads, as data: each names its results, the table's rows, whether it
writes (s3mount-bg runs only those), and two functions, one for a mounted tool
and one for the direct client (s3mount-bench). Each function records the
workload's results for the case's tool; a case that fails has all of its results
marked "error". What a case writes goes under a name with the round trip and the
run in it."""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import s3
from case import CaseFailed, StepFailed, field
from harness import DiskPeak

GIB = 1 << 30
MIB = 1 << 20
W12_SIZE = 256 * MIB
SEED = 42
TREE_FILES = 2000  # the tree of W9 and W10: 100 dirs x 20 files
W11_SIZES = (1000, 10000, 100000)
W13_DISK = "1g"  # the filesystem W13's local disk is on
W14_CACHE = 512 * MIB  # s3mount's --cache-size in W14 (its object is 1 GiB)
W14_FILES = 100
W14_FILE_SIZE = 16 * 1024
W15_STREAMS = 4
W15_SIZE = 2 * GIB
HELPERS = Path(__file__).resolve().parent / "helpers.py"


def since(t0):
    return time.monotonic() - t0


def secs(t0):
    return f"{since(t0):.2f}"


# ---------------------------------------------------------------- fresh data
# Garage stores blocks by content and skips writing one it already has: the
# workloads that write send new random data every time, written back to disk
# before the clock starts.

def fresh_file(c):
    path = c.work / "data" / "w1.bin"
    with open(path, "wb") as f:
        for _ in range(GIB // (16 * MIB)):
            f.write(os.urandom(16 * MIB))
    c.h.bounded_sync(c.log)
    return path


def fresh_files(c):
    d = c.work / "data" / "small"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for i in range(1000):
        (d / f"f{i:04d}").write_bytes(os.urandom(4096))
    c.h.bounded_sync(c.log)
    return d


def fresh_tree(c):
    """The tree of W9 and W10 in DATA/tree/src, and as DATA/tree.tar: the same names
    and sizes every time, new bodies."""
    data = c.work / "data"
    shutil.rmtree(data / "tree", ignore_errors=True)
    (data / "tree.tar").unlink(missing_ok=True)
    c.bench("tree", data / "tree" / "src", "--dirs", 100, "--files", 20, "--min-size", 1024,
            "--max-size", 16384, "--seed", SEED, measured=False)
    c.run(["tar", "-cf", data / "tree.tar", "-C", data / "tree", "src"])
    c.h.bounded_sync(c.log)


def random_seed():
    return str(int.from_bytes(os.urandom(8), "little"))


def per_entry(t0, n):
    return f"{since(t0) * 1e6 / n:.1f}"


def mb_per_s(t0, nbytes):
    return f"{nbytes / 1e6 / since(t0):.0f}"


def check_field(out, name, want, what):
    if field(name, out) != str(want):
        raise StepFailed(f"{what}: {out.strip()}")


def stream_argv(size, path, name):
    """A step that writes SIZE bytes of fresh data to PATH through dd (W13, W15)."""
    return ["bash", "-o", "pipefail", "-c",
            'python3 "$1" stream "$2" | dd of="$3" bs=1M iflag=fullblock',
            name, HELPERS, str(size), str(path)]


def dd_at_once(c, argvs, size, lim, t0, what):
    """Run the dd steps ARGVS at once, for LIM seconds from T0 in all; each must
    have copied SIZE bytes."""
    procs = [c.h.start(argv, log=c.log, stderr=subprocess.PIPE) for argv in argvs]
    errs = []
    for p in procs:
        _, err = c.h.finish(p, max(lim - since(t0), 0.1), what)
        errs.append((p.returncode, (err or b"").decode(errors="replace")))
    for status, err in errs:
        c.say(err)
        if status != 0 or not any(l.startswith(f"{size} bytes") for l in err.splitlines()):
            raise StepFailed(f"{what} failed: {err.strip()}")


def count_lines(path, prefix=""):
    with open(path, errors="replace") as f:
        return sum(1 for line in f if line.startswith(prefix))


# ---------------------------------------------------------------- W1
def w1(c):
    key = f"w1-{c.rtt}-{c.run_no}.bin"
    src = fresh_file(c)
    m = c.mount("W1")
    c0, t0 = m.cpu_ticks(), time.monotonic()
    c.run(["cp", src, m.mnt / key])
    c.bench("wait", c.bucket, key, GIB, "--timeout", c.b.step_limit, measured=False)
    c.result("W1", secs(t0))
    c.result("CPU-W1", m.cpu_since(c0))
    c.result("W8-W1", m.peak_rss())
    c.unmount(m, "W1")


def w1_direct(c):
    key = f"w1-{c.rtt}-{c.run_no}.bin"
    src = fresh_file(c)
    t0 = time.monotonic()
    out = c.bench("put", src, c.bucket, key)
    c.bench("wait", c.bucket, key, GIB, "--timeout", c.b.step_limit, measured=False)
    c.result("W1", secs(t0))
    c.result("W8-W1", field("rss_mib", out))
    c.result("CPU-W1", field("cpu_s", out))


# ---------------------------------------------------------------- W2, W3
def read_cache(c):
    return c.work / "cache" / f"{c.tool.name}-read"


def w2(c):
    c.setup_once("read")
    shutil.rmtree(read_cache(c), ignore_errors=True)
    m = c.mount("W2", cache=read_cache(c))
    c.drop_caches()
    c0, t0 = m.cpu_ticks(), time.monotonic()
    c.read_all(m.mnt / "read" / "big.bin", GIB)
    c.result("W2", secs(t0))
    c.result("CPU-W2", m.cpu_since(c0))
    c.result("W8-W2", m.peak_rss())
    c.unmount(m, "W2")
    c.b.read_cached.add(c.tool.name)


def w2_direct(c):
    c.setup_once("read")
    c.drop_caches()
    t0 = time.monotonic()
    out = c.bench("get", c.bucket, "read/big.bin", "/dev/null")
    c.result("W2", secs(t0))
    c.result("W8-W2", field("rss_mib", out))
    c.result("CPU-W2", field("cpu_s", out))


def w3(c):
    c.setup_once("read")
    if c.tool.keeps_cache and c.tool.name not in c.b.read_cached:
        m = c.mount("W3-prime", cache=read_cache(c))
        c.read_all(m.mnt / "read" / "big.bin", GIB)
        c.unmount(m, "W3-prime")
        c.b.read_cached.add(c.tool.name)
    m = c.mount("W3", cache=read_cache(c))
    c.drop_caches()
    t0 = time.monotonic()
    c.read_all(m.mnt / "read" / "big.bin", GIB)
    c.result("W3", secs(t0))
    c.unmount(m, "W3")


def w3_direct(c):
    # No cache to be warm: the same download as W2.
    c.setup_once("read")
    c.drop_caches()
    t0 = time.monotonic()
    c.bench("get", c.bucket, "read/big.bin", "/dev/null")
    c.result("W3", secs(t0))


# ---------------------------------------------------------------- W4
def w4(c):
    d = f"w4-{c.rtt}-{c.run_no}"
    src = fresh_files(c)
    m = c.mount("W4")
    t0 = time.monotonic()
    c.run(["cp", "-r", src, m.mnt / d])
    c.bench("wait-count", c.bucket, d + "/", 1000, "--timeout", c.b.step_limit, measured=False)
    c.result("W4", secs(t0))
    c.unmount(m, "W4")


def w4_direct(c):
    # put-many makes distinct bodies of its own; a new seed makes them new.
    d = f"w4-{c.rtt}-{c.run_no}"
    t0 = time.monotonic()
    c.bench("put-many", c.bucket, d + "/", 1000, 4096, "--seed", random_seed())
    c.bench("wait-count", c.bucket, d + "/", 1000, "--timeout", c.b.step_limit, measured=False)
    c.result("W4", secs(t0))


# ---------------------------------------------------------------- W5, W11: ls -l
def listing(c, result, what, n, per_entry_unit):
    c.setup_once(what)
    m = c.mount(result)
    out = c.work / "run" / "ls.out"
    c.drop_caches()
    t0 = time.monotonic()
    c.run(["ls", "-l", m.mnt / what], stdout=out)
    c.result(result, per_entry(t0, n) if per_entry_unit else secs(t0))
    seen = count_lines(out, "-")
    if seen != n:
        raise StepFailed(f"ls -l showed {seen} files, not {n}")
    c.unmount(m, result)


def listing_direct(c, result, what, n, per_entry_unit):
    c.setup_once(what)
    c.drop_caches()
    t0 = time.monotonic()
    out = c.bench("list", c.bucket, what + "/")
    c.result(result, per_entry(t0, n) if per_entry_unit else secs(t0))
    check_field(out, "entries", n, "list")


def w5(c):
    listing(c, "W5", "w5", 10000, False)


def w5_direct(c):
    listing_direct(c, "W5", "w5", 10000, False)


def w11_what(n):
    return "w5" if n == 10000 else f"w11-{n}"


def w11(c):
    listing(c, c.id, w11_what(c.arg), c.arg, True)


def w11_direct(c):
    listing_direct(c, c.id, w11_what(c.arg), c.arg, True)


# ---------------------------------------------------------------- W6
def w6(c):
    c.setup_once("read")
    m = c.mount("W6")
    c.drop_caches()
    t0 = time.monotonic()
    c.run([sys.executable, HELPERS, "preads", m.mnt / "read" / "big.bin",
           c.work / "data" / "offsets"], what="preads")
    c.result("W6", secs(t0))
    c.unmount(m, "W6")


def w6_direct(c):
    c.setup_once("read")
    c.drop_caches()
    t0 = time.monotonic()
    c.bench("random-reads", c.bucket, "read/big.bin", 1000, 4096, SEED)
    c.result("W6", secs(t0))


# ---------------------------------------------------------------- W7
def w7(c):
    c.setup_once("w7")
    m = c.mount("W7")
    out = c.work / "run" / "find.out"
    c.drop_caches()
    t0 = time.monotonic()
    c.run(["find", m.mnt / "w7"], stdout=out)
    c.result("W7", secs(t0))
    n = count_lines(out)
    if n != 10101:
        raise StepFailed(f"find printed {n} paths, not 10101")
    c.unmount(m, "W7")


def w7_direct(c):
    c.setup_once("w7")
    c.drop_caches()
    t0 = time.monotonic()
    out = c.bench("walk", c.bucket, "w7/")
    c.result("W7", secs(t0))
    if f"{field('dirs', out)}/{field('files', out)}" != "100/10000":
        raise StepFailed(f"walk: {out.strip()}")


# ---------------------------------------------------------------- W9, W10
def w9(c):
    d = f"w9-{c.rtt}-{c.run_no}"
    fresh_tree(c)
    m = c.mount("W9")
    c.run(["mkdir", m.mnt / d])
    t0 = time.monotonic()
    # As a user would: the files get the user's owner, not the archive's.
    c.run(["tar", "--no-same-owner", "-xf", c.work / "data" / "tree.tar", "-C", m.mnt / d])
    c.bench("wait-count", c.bucket, d + "/", TREE_FILES, "--timeout", c.b.step_limit, measured=False)
    c.result("W9", secs(t0))
    c.unmount(m, "W9")


def w9_direct(c):
    d = f"w9-{c.rtt}-{c.run_no}"
    fresh_tree(c)
    t0 = time.monotonic()
    c.bench("put-tree", c.work / "data" / "tree" / "src", c.bucket, d + "/src/")
    c.bench("wait-count", c.bucket, d + "/", TREE_FILES, "--timeout", c.b.step_limit, measured=False)
    c.result("W9", secs(t0))


def w10(c):
    d = f"w10-{c.rtt}-{c.run_no}"
    src = str(c.work / "data" / "tree" / "src") + "/"
    fresh_tree(c)
    m = c.mount("W10-first")
    c.run(["rsync", "-a", src, f"{m.mnt / d}/"])
    c.bench("wait-count", c.bucket, d + "/", TREE_FILES, "--timeout", c.b.step_limit, measured=False)
    c.unmount(m, "W10-first")
    m = c.mount("W10")
    out = c.work / "run" / "rsync.out"
    c.drop_caches()
    t0 = time.monotonic()
    c.run(["rsync", "-a", "--stats", src, f"{m.mnt / d}/"], stdout=out)
    c.result("W10", secs(t0))
    sent = "?"
    for line in open(out, errors="replace"):
        if line.startswith("Number of regular files transferred:"):
            sent = line.split(":", 1)[1].strip().replace(",", "")
    c.result("W10-sent", sent)
    c.unmount(m, "W10")


def w10_direct(c):
    # The tree, uploaded directly; what is timed is one recursive listing of it,
    # the sizes and dates a sync compares to find nothing to send.
    d = f"w10-{c.rtt}-{c.run_no}"
    fresh_tree(c)
    c.bench("put-tree", c.work / "data" / "tree" / "src", c.bucket, d + "/", measured=False)
    c.drop_caches()
    t0 = time.monotonic()
    out = c.bench("list", "--recursive", c.bucket, d + "/")
    c.result("W10", secs(t0))
    check_field(out, "entries", TREE_FILES, "list")


# ---------------------------------------------------------------- W12
def w12(c):
    c.setup_once("w12")
    m = c.mount("W12")
    c.drop_caches()
    t0 = time.monotonic()
    lim = c.step_limit()
    reads = [["dd", f"if={m.mnt / 'w12' / f'{i}.bin'}", "of=/dev/null", "bs=1M"] for i in range(4)]
    dd_at_once(c, reads, W12_SIZE, lim, t0, "a read of W12")
    c.result("W12", mb_per_s(t0, 4 * W12_SIZE))
    c.result("W12-rss", m.peak_rss())
    c.unmount(m, "W12")


def w12_direct(c):
    c.setup_once("w12")
    c.drop_caches()
    t0 = time.monotonic()
    out = c.bench("get-many", c.bucket, *[f"w12/{i}.bin" for i in range(4)])
    c.result("W12", mb_per_s(t0, 4 * W12_SIZE))
    c.result("W12-rss", field("rss_mib", out))


# ---------------------------------------------------------------- W13
def w13_limit(c):
    """A step of W13 may take the usual limit plus 30 MB/s for the stream."""
    return c.b.step_limit + c.b.w13_size / 30e6


def disk_room(c, need):
    """Wait (15 min at most) until the work directory's filesystem has NEED bytes
    free: Garage frees the blocks of a deleted object 10 minutes after the delete."""
    deadline = time.monotonic() + 900
    while True:
        st = os.statvfs(c.work)
        free = st.f_bavail * st.f_frsize
        if free >= need:
            return
        if time.monotonic() > deadline:
            raise StepFailed(f"{free >> 30} GiB free in {c.work}, W13 needs {need >> 30} GiB")
        c.say(f"{free >> 30} GiB free, waiting for Garage to free the blocks of an earlier W13")
        time.sleep(10)


def w13(c):
    size = c.b.w13_size
    key = f"w13-{c.rtt}-{c.run_no}.bin"
    disk_room(c, size + 2 * GIB)
    small = c.work / "small-disk"
    c.h.mount_tmpfs(small, W13_DISK)
    c.cleanups.append(lambda: c.h.unmount_tmpfs(small, lazy=True))
    # The 20 GiB stay in Garage only as long as the case: delete them (and any
    # upload a failure left) once it is over.
    c.cleanups.append(lambda: forget(c, key))
    cache = small / "cache"
    m = c.mount("W13", cache=cache)
    lim = w13_limit(c)
    with DiskPeak(small) as disk:
        c0, t0 = m.cpu_ticks(), time.monotonic()
        _, err = c.run(stream_argv(size, m.mnt / key, "w13"), capture_err=True, limit=lim,
                       check=False, what="the stream (dd)")
        streamed = any(line.startswith(f"{size} bytes") for line in err.splitlines())
        if streamed:
            c.bench("wait", c.bucket, key, size, "--timeout", int(lim), measured=False, limit=lim)
            elapsed = secs(t0)
            cpu = m.cpu_since(c0)
    if not streamed:
        # A tool whose local disk filled may say ENOSPC, or EIO (s3fs, rclone).
        if "No space left" in err:
            cell = "error: ENOSPC"
        elif disk.peak >= 0.95 * disk.size():
            cell = "error: disk full"
        else:
            cell = "error"
        raise CaseFailed(f"the stream failed ({disk.peak >> 20} MiB of the small disk used at most): "
                         + err.strip(), cell=cell)
    c.result("W13", elapsed)
    c.result("W13-disk", str(disk.peak >> 20))
    c.result("W13-cpu", cpu)
    c.result("W13-rss", m.peak_rss())
    c.unmount(m, "W13")


def forget(c, key):
    try:
        s3.delete_object(c.b.env, c.bucket, key)
        n = s3.abort_uploads(c.b.env, c.bucket, key)
        c.say(f"deleted {key}" + (f", aborted {n} upload(s)" if n else ""))
    except OSError as e:
        c.say(f"could not delete {key}: {e}")


# ---------------------------------------------------------------- W14
def w14(c):
    c.setup_once("read")
    c.setup_once("w14")
    m = c.mount("W14", cache_size=W14_CACHE)
    files = [m.mnt / "w14" / f"f{i:05d}" for i in range(W14_FILES)]
    read_files = [sys.executable, HELPERS, "read-files", W14_FILE_SIZE, *files]
    c.drop_caches()
    t0 = time.monotonic()
    c.run(read_files, what="read-files")
    first = since(t0)
    c.drop_caches()
    t0 = time.monotonic()
    c.read_all(m.mnt / "read" / "big.bin", GIB)
    c.result("W14-big", secs(t0))
    gets = c.requests(m, "GetObject") if c.tool.counts_requests else None
    c.drop_caches()
    t0 = time.monotonic()
    c.run(read_files, what="read-files")
    again = since(t0)
    if gets is not None:
        c.result("W14-gets", str(c.requests(m, "GetObject") - gets))
    c.result("W14-first", f"{first:.2f}")
    c.result("W14-ratio", f"{again / first:.2f}")
    c.result("W14", f"{again:.2f}")
    c.unmount(m, "W14")


# ---------------------------------------------------------------- W15
def w15(c):
    """Four 2 GiB streams written at once with the default cache: what memory and
    CPU a backup of several big files at a time costs."""
    keys = [f"w15-{c.rtt}-{c.run_no}-{i}.bin" for i in range(W15_STREAMS)]
    disk_room(c, W15_STREAMS * W15_SIZE + 2 * GIB)
    for key in keys:
        c.cleanups.append(lambda key=key: forget(c, key))
    m = c.mount("W15")
    lim = c.b.step_limit + W15_STREAMS * W15_SIZE / 30e6
    c0, t0 = m.cpu_ticks(), time.monotonic()
    streams = [stream_argv(W15_SIZE, m.mnt / key, "w15") for key in keys]
    dd_at_once(c, streams, W15_SIZE, lim, t0, "a stream of W15")
    for key in keys:
        c.bench("wait", c.bucket, key, W15_SIZE, "--timeout", int(lim), measured=False, limit=lim)
    c.result("W15", secs(t0))
    c.result("W15-cpu", m.cpu_since(c0))
    c.result("W15-rss", m.peak_rss())
    c.unmount(m, "W15")


# ---------------------------------------------------------------- the list
@dataclass
class Workload:
    id: str
    mounted: Callable
    direct: Optional[Callable]
    results: tuple = ()  # what it records besides its id (marked "error" with it)
    unit: str = "s"  # of the main result, for the progress lines
    writes: bool = False
    params: tuple = (None,)  # W11: one case per directory size
    case_limit: Optional[Callable] = None  # seconds one case may take (default CASE_LIMIT)
    data: tuple = ()  # local files it reads (prepared once): read, offsets, w12

    def cases(self):
        """(case id, parameter, results) of each of its cases."""
        for p in self.params:
            cid = self.id if p is None else f"{self.id}-{p}"
            yield cid, p, (cid,) + tuple(self.results)


WORKLOADS = [
    Workload("W1", w1, w1_direct, ("W8-W1", "CPU-W1"), writes=True),
    Workload("W2", w2, w2_direct, ("W8-W2", "CPU-W2"), data=("read",)),
    Workload("W3", w3, w3_direct, data=("read",)),
    Workload("W4", w4, w4_direct, writes=True),
    Workload("W5", w5, w5_direct),
    Workload("W6", w6, w6_direct, data=("read", "offsets")),
    Workload("W7", w7, w7_direct),
    Workload("W8", None, None),  # measured during W1 and W2
    Workload("W9", w9, w9_direct, writes=True),
    Workload("W10", w10, w10_direct, ("W10-sent",), writes=True),
    Workload("W11", w11, w11_direct, unit="us per entry", params=W11_SIZES),
    Workload("W12", w12, w12_direct, ("W12-rss",), unit="MB/s", data=("w12",)),
    Workload("W13", w13, None, ("W13-disk", "W13-cpu", "W13-rss"), writes=True,
             case_limit=lambda b: 2400 + 2 * b.w13_size / 30e6),
    Workload("W14", w14, None, ("W14-first", "W14-big", "W14-ratio", "W14-gets"),
             data=("read",)),
    Workload("W15", w15, None, ("W15-cpu", "W15-rss"), writes=True,
             case_limit=lambda b: 2400 + 2 * W15_STREAMS * W15_SIZE / 30e6),
]
ALL_IDS = [w.id for w in WORKLOADS]


@dataclass
class Row:
    """A line of the table: result NAME, shown when workload WHEN was selected.
    kind: "less" (lower is better), "more" (higher is better), "none" (no ratios)."""

    name: str
    title: str
    when: str
    kind: str = "less"


def rows(w13_size_text):
    r = [
        Row("W1", "W1 cp 1 GiB into the mount, until in the bucket (s)", "W1"),
        Row("W2", "W2 cold sequential read of 1 GiB (s)", "W2"),
        Row("W3", "W3 warm re-read of 1 GiB, fresh mount (s)", "W3"),
        Row("W4", "W4 cp 1,000 files of 4 KiB, until in the bucket (s)", "W4"),
        Row("W5", "W5 ls -l of 10,000 objects, cold (s)", "W5"),
        Row("W6", "W6 1,000 random 4 KiB preads in 1 GiB, cold (s)", "W6"),
        Row("W7", "W7 find over 100 dirs x 100 files, cold (s)", "W7"),
        Row("W8-W1", "W8 peak RSS during W1 (MiB)", "W8"),
        Row("W8-W2", "W8 peak RSS during W2 (MiB)", "W8"),
        Row("CPU-W1", "W1 daemon CPU, user + system (s)", "W1"),
        Row("CPU-W2", "W2 daemon CPU, user + system (s)", "W2"),
        Row("W9", "W9 tar xf of 2,000 files of 1-16 KiB, until in the bucket (s)", "W9"),
        Row("W10", "W10 rsync -a of 2,000 files already there, cold (s)", "W10"),
        Row("W10-sent", "W10 files that rsync sent again (files)", "W10", "none"),
    ]
    r += [Row(f"W11-{n}", f"W11 ls -l of {n:,} objects, cold (us per entry)", "W11")
          for n in W11_SIZES]
    r += [
        Row("W12", "W12 4 concurrent cold reads of 256 MiB objects, in all (MB/s)", "W12", "more"),
        Row("W12-rss", "W12 peak RSS during W12 (MiB)", "W12"),
        Row("W13", f"W13 dd of {w13_size_text} into the mount, cache on 1 GiB, until in the bucket (s)",
            "W13"),
        Row("W13-disk", "W13 peak disk used on that 1 GiB (MiB)", "W13"),
        Row("W13-cpu", "W13 daemon CPU, user + system (s)", "W13"),
        Row("W13-rss", "W13 peak RSS (MiB)", "W13"),
        Row("W14-first", "W14 cold read of 100 files of 16 KiB (s)", "W14"),
        Row("W14-big", "W14 then a cold read of 1 GiB, twice the cache (s)", "W14"),
        Row("W14", "W14 then a re-read of the 100 files (s)", "W14"),
        Row("W14-ratio", "W14 re-read / first read (below 1: they stayed warm)", "W14", "none"),
        Row("W14-gets", "W14 GETs of the re-read (s3mount status)", "W14", "none"),
        Row("W15", "W15 4 concurrent dd of 2 GiB into the mount, until in the bucket (s)", "W15"),
        Row("W15-cpu", "W15 daemon CPU, user + system (s)", "W15"),
        Row("W15-rss", "W15 peak RSS (MiB)", "W15"),
    ]
    return r
