"""The table: each selected tool at each round trip, the ratios against s3mount,
and the requests s3mount logged."""

import re

from tools import ALL_TOOLS, PEERS
from workloads import rows

NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def is_number(v):
    return bool(NUMBER.match(v))


def median(values):
    """The median of the runs (the lower of the middle two for an even count: a
    value that was measured); the first "error..." or "n/a..." if a run has one,
    "-" if none ran, "?" if a value is not a number."""
    if not values:
        return "-"
    for prefix in ("error", "n/a"):
        for v in values:
            if v.startswith(prefix):
                return v
    if not all(is_number(v) for v in values):
        return "?"
    ordered = sorted(values, key=float)
    return ordered[(len(ordered) + 1) // 2 - 1]


def ratio(a, b):
    if is_number(a) and is_number(b) and float(b) > 0:
        return f"{float(a) / float(b):.2f}"
    return "-"


class Table:
    def __init__(self, results, tools, rtts, selected, w13_size_text):
        self.results = results  # (name, tool, rtt) -> {run: value}
        self.tools = [t for t in ALL_TOOLS if t in tools]
        self.rtts = rtts
        self.selected = selected
        self.w13_size_text = w13_size_text

    def get(self, name, tool, rtt):
        return median(list(self.results.get((name, tool, rtt), {}).values()))

    def best_peer(self, name, rtt, more):
        best = "-"
        for t in PEERS:
            v = self.get(name, t, rtt)
            if not is_number(v):
                continue
            if best == "-" or (float(v) > float(best) if more else float(v) < float(best)):
                best = v
        return best

    def uses(self, tool):
        return tool in self.tools

    def lines(self):
        single = self.rtts == [0]
        label = (lambda r: "") if single else (lambda r: f" {r} ms")
        all_rtts = "" if single else " (" + ", ".join(str(r) for r in self.rtts) + " ms)"
        peers = self.uses("s3mount") and any(self.uses(p) for p in PEERS)
        direct = self.uses("s3mount") and self.uses("direct")
        header = "| workload |"
        for t in self.tools:
            for r in self.rtts:
                header += f" {t}{label(r)} |"
        if peers:
            header += f" s3mount / best peer{all_rtts} |"
        if direct:
            header += f" s3mount / direct{all_rtts} |"
        if self.uses("s3mount"):
            header += f" s3mount S3 requests{all_rtts} |"
        out = [header, "|" + "---|" * (header.count("|") - 1)]
        for row in rows(self.w13_size_text):
            if row.when not in self.selected:
                continue
            line = f"| {row.title} |"
            for t in self.tools:
                for r in self.rtts:
                    line += f" {self.get(row.name, t, r)} |"
            # Ratios are s3mount's value over the other's, or when higher is better
            # the other's over s3mount's: below 1 is always s3mount ahead.
            to_peer, to_direct, reqs = [], [], []
            for r in self.rtts:
                s = self.get(row.name, "s3mount", r)
                if row.kind == "less":
                    to_peer.append(ratio(s, self.best_peer(row.name, r, False)))
                    to_direct.append(ratio(s, self.get(row.name, "direct", r)))
                elif row.kind == "more":
                    to_peer.append(ratio(self.best_peer(row.name, r, True), s))
                    to_direct.append(ratio(self.get(row.name, "direct", r), s))
                else:
                    to_peer.append("-")
                    to_direct.append("-")
                reqs.append(self.get(row.name, "s3mount.req", r))
            if peers:
                line += f" {', '.join(to_peer)} |"
            if direct:
                line += f" {', '.join(to_direct)} |"
            if self.uses("s3mount"):
                line += f" {', '.join(reqs)} |"
            out.append(line)
        return out


NOTES = """\
Ratios below 1 mean s3mount is ahead: faster, smaller, or for MB/s more (that ratio is the other's over s3mount's).
Times are wall clock, including process start (cp, dd, ls, find, tar, rsync, python3, s3mount-bench).
W1, W4, W9 and W13 end when the bucket has every object (rclone uploads after close, by default 5 s later);
they and W10 write new random data each time, since Garage skips storing blocks it already has.
direct is s3mount-bench: parallel multipart upload and ranged GETs (8 x 8 MiB), 32 PUTs in flight,
listings per directory (16 in flight for W7); its W3 repeats W2 (it has no cache), its W8, W12 RSS
and CPU are its own; its W9 is put-tree (32 PUTs in flight), its W10 one recursive listing of the
tree, its W12 four get-many downloads in one process. Daemon CPU is the mount daemon's (utime + stime)
from the start of the copy or read until the data is in the bucket or read.
mount-s3 runs with its defaults (no local cache: reads and writes stream) and --allow-overwrite
--allow-delete; 'n/a' says what it cannot do (rsync renames, tar sets modes and times)."""

W13_NOTE = """\
W13 streams new data (a 256 MiB random buffer, each pass rotated) through dd bs=1M into a new file;
each tool's local disk (s3mount --cache-dir, s3fs tmpdir, rclone --cache-dir) is on a 1 GiB tmpfs,
whose peak use is sampled every 0.2 s; mount-s3 keeps nothing on disk. The object is deleted after."""

W14_NOTE = """\
W14, through one mount: a cold read of 100 files of 16 KiB, a cold read of a 1 GiB object, and a
re-read of the 100 files (the page cache dropped before each); s3mount with --cache-size 512MiB,
rclone --vfs-cache-max-size 512M (its cache holds only what is written); s3fs and mount-s3 keep no read
cache here. GETs: those s3mount's status counted during the re-read."""

RTT_NOTE = """\
N ms: every tool reached Garage through a proxy holding each direction for N/2 ms (0 ms: direct,
on loopback); new connections cost no extra round trip there, as they would (with TLS, more) on S3."""

TAIL_NOTE = """\
Garage 2.5.0 answers a ranged GET of 4 KiB in ~30 ms but one of 64 KiB in ~3 ms (it does not set
TCP_NODELAY): that is most of direct's W6, which reads exactly 4 KiB; the mounts fetch larger blocks.
s3mount-bg is s3mount with --background-uploads (close returns once the file is safe on local disk;
the upload follows), run only in the workloads that write; the ratios are those of s3mount with the default close.
Requests are those s3mount logged at unmount, mount check included. '-': not run; 'error': see the logs."""


def notes(rtts, selected):
    out = [NOTES]
    if "W13" in selected:
        out.append(W13_NOTE)
    if "W14" in selected:
        out.append(W14_NOTE)
    if rtts != [0]:
        out.append(RTT_NOTE)
    out.append(TAIL_NOTE)
    return "\n".join(out)
