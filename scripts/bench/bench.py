#!/usr/bin/env python3
"""The benchmark: s3mount side by side with s3fs, rclone mount, mount-s3 and the direct
client (s3mount-bench: the same aws-sdk-s3 without FUSE), on one private Garage server,
at one or more network round-trip times.

  scripts/bench.sh                          every workload, every tool, loopback
  scripts/bench.sh W1 W5                    only these workloads
  scripts/bench.sh --tools s3mount,direct   only these tools (s3mount, s3mount-bg, s3fs,
                                            rclone, mount-s3, direct; s3mount-bg is s3mount
                                            with --background-uploads, in the workloads
                                            that write only: W1, W4, W9, W10, W13, W15)
  scripts/bench.sh --rtt 0,20               each workload at each round-trip time in ms:
                                            0 talks to Garage on loopback, any other
                                            through a delay proxy (default 0)
  scripts/bench.sh --runs 1                 run each case once (default 3, median shown)
  scripts/bench.sh --dir DIR                work in DIR and keep the logs there (default:
                                            a new directory under $TMPDIR or /tmp, removed
                                            at the end unless a case failed; ~17 GB, and
                                            the size of W13 more with W13, 8 GiB with W15)
  scripts/bench.sh --w13-size SIZE          the stream of W13 (default 20GiB; 2GiB, 512MiB...)

Workloads (wall clock in seconds, lower is better, unless said otherwise):
  W1  cp a 1 GiB file into the mount, until the object is in the bucket
  W2  cold sequential read of a 1 GiB object (fresh mount, page cache dropped)
  W3  warm re-read of it through a fresh mount (s3mount: same --cache-dir)
  W4  cp of 1,000 files of 4 KiB into a new directory, until all are in the bucket
  W5  ls -l of a directory of 10,000 objects, cold
  W6  1,000 preads of 4 KiB at random offsets (fixed seed) in a 1 GiB object, cold
  W7  find over 100 directories x 100 files, cold
  W8  peak RSS of each mount daemon during W1 and W2 (selecting W8 runs W1 and W2)
  W1 and W2 also report the CPU time (user + system) the mount daemon spent on them
  W9  tar xf of a source tree (100 dirs x 20 files of 1-16 KiB) into the mount, until
      all 2,000 files are in the bucket
  W10 rsync -a of that tree onto its copy in the mount (made by a first rsync, not
      timed) through a fresh mount: finds nothing to send; also the files it sent
  W11 ls -l of directories of 1,000, 10,000 and 100,000 objects, cold, in microseconds
      per entry (the objects are written once per bucket; 100,000 take ~1 min each)
  W12 four concurrent reads of four 256 MiB objects through one fresh mount, cold, in
      MB/s in all (higher is better), and the daemon's peak RSS during them
  W13 dd of a 20 GiB stream (--w13-size) into a new file, until the object is in the
      bucket, with the tool's local disk (cache directory, temporary files) on a 1 GiB
      tmpfs: the time, the peak space used there, the daemon's CPU and peak RSS
  W14 through one mount: a cold read of 100 files of 16 KiB, a cold read of a 1 GiB
      object (twice s3mount's --cache-size 512MiB), then a re-read of the 100 files:
      its time against the first read's, and for s3mount the GETs it made
  W15 four dd of 2 GiB streams into four new files at once, default cache, until the
      objects are in the bucket: the time, the daemon's CPU and peak RSS

Each tool has its own bucket, every case its own fresh mount; cold workloads (and
W3) drop the page cache first. W1, W4, W9, W10, W13 and W15 write new random data every
time, as Garage stores blocks by content and skips writing a block it already has.
With --rtt, every tool (and the direct client) reaches Garage through
`s3mount-bench proxy`, which holds each direction of every connection for half
the round trip; the setup and the checks that objects arrived go direct. A cell
"n/a: ..." is a workload the tool cannot run (mount-s3 cannot rename, chmod or
set times after close: W9, W10; the direct client has no cache or stream: W13, W14, W15).

The table goes to stdout, progress to stderr, logs to DIR/logs. A case that fails
(a tool that cannot mount, hangs at unmount, or any step over its time limit) marks
only that tool's cells "error" and the run goes on. Needs root (apt-get, mounts,
drop_caches). Installs s3fs, rclone, fuse3 and Garage where missing, and builds
mount-s3 (scripts/mount-s3.sh, about 10 minutes once); stops every server, proxy,
mount and process it started, also on error or Ctrl-C. Everything with 3 runs at
loopback takes about 35 minutes on 2 cores without W13, W14 and W15 (plus the first
build of Garage); each further round trip of 20 ms about 90 more. Other load on
the machine skews the numbers.
"""

import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # nothing written next to the scripts

from case import Case, StepFailed
from harness import Harness, tail_lines
import report
import tools
import workloads
from workloads import GIB, SEED, W12_SIZE

STEP_LIMIT = int(os.environ.get("BENCH_STEP_LIMIT", "600"))  # seconds any one step may take
CASE_LIMIT = 2400  # seconds one case (one workload, tool, round trip and run) may take
NEEDS_GB = 17  # free disk the benchmark needs, W13 aside


def say(text="", end="\n"):
    sys.stderr.write(text + end)
    sys.stderr.flush()


def usage(to=sys.stdout):
    to.write(__doc__)


def parse_size(text):
    m = re.fullmatch(r"([0-9]+)([KMGT]?)(i?B)?", text, re.IGNORECASE)
    if not m or int(m.group(1)) == 0:
        return None
    return int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper()))


def size_text(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


class Options:
    def __init__(self):
        self.workloads = []
        self.tools = list(tools.ALL_TOOLS)
        self.rtts = [0]
        self.work = None
        self.runs = 3
        self.w13_size = 20 * GIB


def parse_args(argv):
    o = Options()

    def bad(msg=None):
        if msg:
            say(f"bench.sh: {msg}")
        usage(sys.stderr)
        sys.exit(2)

    def value(i, name):
        a = argv[i]
        if a.startswith(name + "="):
            return a[len(name) + 1:], i
        if i + 1 >= len(argv):
            bad()
        return argv[i + 1], i + 1

    i = 0
    while i < len(argv):
        a = argv[i]
        if a in workloads.ALL_IDS:
            o.workloads.append(a)
        elif a == "--tools" or a.startswith("--tools="):
            v, i = value(i, "--tools")
            o.tools = v.split(",")
        elif a == "--rtt" or a.startswith("--rtt="):
            v, i = value(i, "--rtt")
            if not re.fullmatch(r"[0-9]+(,[0-9]+)*", v):
                bad()
            # Each round trip once, as a plain number (020 is 20), in the order given.
            o.rtts = list(dict.fromkeys(int(r) for r in v.split(",")))
        elif a == "--dir" or a.startswith("--dir="):
            o.work, i = value(i, "--dir")
        elif a == "--runs" or a.startswith("--runs="):
            v, i = value(i, "--runs")
            if not re.fullmatch(r"[1-9][0-9]*", v):
                bad()
            o.runs = int(v)
        elif a == "--w13-size" or a.startswith("--w13-size="):
            v, i = value(i, "--w13-size")
            size = parse_size(v)
            if size is None or size % (1 << 20):
                bad(f"--w13-size takes a whole number of MiB (20GiB, 512MiB...), not {v}")
            o.w13_size = size
        elif a in ("-h", "--help"):
            usage()
            sys.exit(0)
        else:
            bad(f"unknown argument {a}")
        i += 1
    if not o.workloads:
        o.workloads = list(workloads.ALL_IDS)
    for t in o.tools:
        if t not in tools.TOOLS:
            say(f"bench.sh: unknown tool {t} (tools: {' '.join(tools.ALL_TOOLS)})")
            sys.exit(2)
    # W8 is measured during W1 and W2.
    if "W8" in o.workloads:
        o.workloads += [w for w in ("W1", "W2") if w not in o.workloads]
    return o


class Bench:
    """The state of one benchmark run: paths, Garage's settings, the current round
    trip, and the results."""

    def __init__(self, repo, opts, work, keep_work):
        self.repo = repo
        self.opts = opts
        self.work = work
        self.keep_work = keep_work
        self.logs = work / "logs"
        self.bin = work / "bin"
        self.bench_bin = self.bin / "s3mount-bench"
        self.step_limit = STEP_LIMIT
        self.w13_size = opts.w13_size
        self.h = Harness(work)
        self.env = {}  # Garage's settings (scripts/garage.sh start writes them)
        self.endpoints = {}  # round trip -> endpoint
        self.endpoint = None
        self.rtt = 0
        self.s3fs_passwd = work / "s3fs.passwd"
        self.results = {}  # (name, tool, rtt) -> {run: value}
        self.setup_done = set()  # (tool, what) written once per bucket
        self.read_cached = set()  # tools whose read cache has read/big.bin (W2, W3)
        self.failed_cases = 0

    def tool_env(self):
        env = dict(os.environ)
        env.update(self.env)
        return env

    def record(self, name, tool, rtt, run, value):
        self.results.setdefault((name, tool, rtt), {})[run] = str(value)

    def use_rtt(self, rtt):
        self.rtt = rtt
        self.endpoint = self.endpoints[rtt]


# ---------------------------------------------------------------- installation
def install(repo, opts):
    selected = [tools.TOOLS[t] for t in opts.tools]
    missing = tools.missing_packages(selected)
    if "W10" in opts.workloads and not shutil.which("rsync"):
        missing.append("rsync")
    if missing:
        say(f"Installing {' '.join(missing)}...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    subprocess.run([repo / "scripts" / "install-deps.sh"], check=True)
    subprocess.run([repo / "scripts" / "garage.sh", "install"], check=True)
    say("Building s3mount and s3mount-bench...")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "s3mount",
                    "--bin", "s3mount-bench"], check=True, cwd=repo)
    for t in selected:
        t.prepare(repo)


# ---------------------------------------------------------------- Garage and proxies
def start_garage(b):
    buckets = [tools.TOOLS[t].bucket for t in b.opts.tools]
    say("Starting Garage...")
    subprocess.run([b.repo / "scripts" / "garage.sh", "start", b.work / "garage", *buckets],
                   check=True, stdout=subprocess.DEVNULL)
    for line in (b.work / "garage" / "env").read_text().splitlines():
        m = re.fullmatch(r"export ([A-Z_0-9]+)=(.*)", line.strip())
        if m:
            b.env[m.group(1)] = m.group(2)
    b.s3fs_passwd.write_text(f"{b.env['AWS_ACCESS_KEY_ID']}:{b.env['AWS_SECRET_ACCESS_KEY']}\n")
    b.s3fs_passwd.chmod(0o600)


def start_proxies(b):
    # S3_ENDPOINT stays Garage's: s3mount-bench reaches it directly for the setup and
    # the checks; what is measured uses the current round trip's endpoint.
    port = b.env["S3_ENDPOINT"].rsplit(":", 1)[1]
    for r in b.opts.rtts:
        if r == 0:
            b.endpoints[r] = b.env["S3_ENDPOINT"]
            continue
        say(f"Starting the delay proxy for {r} ms...")

        def listening(line):
            m = re.match(r"^listening=(\S+)", line)
            return m.group(1) if m else None

        try:
            addr = b.h.start_server(
                f"the delay proxy ({r} ms)",
                [b.bench_bin, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{port}",
                 "--delay-ms", r],
                b.logs / f"proxy-{r}.log", listening, env=b.tool_env())
        except StepFailed as e:
            say(f"bench.sh: {e}")
            raise SystemExit(1)
        b.endpoints[r] = f"http://{addr}"


# ---------------------------------------------------------------- data
def prepare_data(b, run_order):
    data = {d for _, _, _, w in run_order for d in w.data}
    d = b.work / "data"
    if "read" in data:
        with open(d / "read.bin", "wb") as f:
            for _ in range(GIB // (16 << 20)):
                f.write(os.urandom(16 << 20))
    if "offsets" in data:
        with open(d / "offsets", "wb") as f:
            subprocess.run([b.bench_bin, "offsets", GIB, 1000, 4096, SEED], check=True, stdout=f,
                           env=b.tool_env())
    if "w12" in data:
        for i in range(4):
            with open(d / f"w12-{i}.bin", "wb") as f:
                for _ in range(W12_SIZE // (16 << 20)):
                    f.write(os.urandom(16 << 20))


# ---------------------------------------------------------------- cases
def run_case(b, case_id, arg, results, w, tool, run):
    rtt = b.rtt
    say(f"{case_id:<9} {tool.name:<8} {rtt:>4} ms run {run}/{b.opts.runs}: ", end="")
    fn = w.direct if tool.direct else w.mounted
    reason = tool.cannot.get(w.id) or (None if fn else "n/a")
    if reason:
        for name in results:
            b.record(name, tool.name, rtt, run, reason)
        say(reason)
        return
    log = b.logs / f"{case_id}-{tool.name}-{rtt}-{run}.log"
    limit = w.case_limit(b) if w.case_limit else CASE_LIMIT
    c = Case(b, case_id, arg, tool, rtt, run, log, limit)
    ok, cell = False, "error"
    try:
        fn(c)
        ok = True
    except StepFailed as e:
        c.say(f"bench.sh: {e}")
        cell = getattr(e, "cell", "error")
    except Exception:  # a fault of the harness: this case fails, the run goes on
        c.say(traceback.format_exc())
    finally:
        b.h.stop_steps()
        b.h.release_mounts()
        for undo in reversed(c.cleanups):
            try:
                undo()
            except Exception:
                c.say(traceback.format_exc())
        c.close()
    main = b.results.get((case_id, tool.name, rtt), {}).get(run)
    if ok and main is not None:
        say(f"{main} {w.unit}")
    else:
        say(f"failed; {log} says:")
        say("".join("    " + line + "\n" for line in tail_lines(log, 5).splitlines()), end="")
        for name in results:
            b.record(name, tool.name, rtt, run, cell)
        b.failed_cases += 1


# ---------------------------------------------------------------- report
def version_line(b):
    commit = subprocess.run(["git", "-C", b.repo, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    if subprocess.run(["git", "-C", b.repo, "diff", "--quiet", "HEAD"]).returncode != 0:
        commit += " with uncommitted changes"
    garage = re.search(r"^GARAGE_VERSION=(\S+)", (b.repo / "scripts" / "garage.sh").read_text(), re.M)
    parts = [f"s3mount {commit}"]
    parts += [tools.TOOLS[t].version(b) for t in tools.PEERS if t in b.opts.tools]
    parts.append(f"Garage {garage.group(1) if garage else '?'}")
    return "; ".join(parts)


def machine_line():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) >> 20
    pretty = "?"
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {mem} GiB, {pretty}, kernel {os.uname().release}"


def print_report(b, cmdline, started, t_start):
    o = b.opts
    table = report.Table(b.results, o.tools, o.rtts, set(o.workloads), size_text(b.w13_size))
    minutes = (time.monotonic() - t_start) / 60
    out = [
        "",
        "## s3mount benchmark",
        "",
        f"Command: `{cmdline}`",
        f"Date: {started}; {o.runs} run(s) of each case, the median shown; the whole run took {minutes:.0f} min",
        f"Machine: {machine_line()}",
        f"Versions: {version_line(b)}",
        "",
        *table.lines(),
        "",
        report.notes(o.rtts, set(o.workloads)),
    ]
    sys.stdout.write("\n".join(out) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- main
def mounts_under(path):
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        return [fields[4] for fields in (line.split() for line in f)
                if len(fields) > 4 and fields[4].startswith(prefix)]


def cleanup(b, status):
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    b.h.release_all()
    if (b.work / "garage" / "garage.pid").exists():
        subprocess.run([b.repo / "scripts" / "garage.sh", "stop", b.work / "garage"])
    left = mounts_under(b.work)
    if left:
        say(f"bench.sh: still mounted, left in place: {' '.join(left)}")
    for name in ("data", "garage", "cache", "mnt", "bin", "run", "small-disk", "s3fs.passwd"):
        p = b.work / name
        if any(m == str(p) or m.startswith(str(p) + "/") for m in left):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
    if status != 0:
        say(f"bench.sh: stopped (status {status}); logs are in {b.logs}")
    elif b.keep_work:
        say(f"Logs are in {b.logs}")
    elif b.failed_cases:
        say(f"{b.failed_cases} case(s) failed; logs are in {b.logs}")
    elif not left:
        shutil.rmtree(b.work, ignore_errors=True)


def main(argv):
    repo = Path(__file__).resolve().parent.parent.parent
    os.chdir(repo)
    os.environ["LC_ALL"] = "C"
    cmdline = "scripts/bench.sh" + "".join(
        " " + (a if re.fullmatch(r"[A-Za-z0-9_./=:,+-]+", a) else shlex.quote(a)) for a in argv)
    opts = parse_args(argv)
    if os.geteuid() != 0:
        say("bench.sh: run as root (it installs packages, mounts and drops the page cache)")
        return 1

    # The cases of a run, in order: W11 is one case per directory size.
    run_order = [(cid, arg, results, w) for w in workloads.WORKLOADS
                 if w.id in opts.workloads and w.mounted for cid, arg, results in w.cases()]

    try:
        install(repo, opts)
    except subprocess.CalledProcessError as e:
        say(f"bench.sh: {' '.join(str(a) for a in e.cmd)} failed (status {e.returncode})")
        return 1
    target = Path(os.environ.get("CARGO_TARGET_DIR") or repo / "target")
    if not target.is_absolute():
        target = repo / target

    keep_work = opts.work is not None
    if opts.work is None:
        work = Path(tempfile.mkdtemp(prefix="s3mount-bench.", dir=os.environ.get("TMPDIR", "/tmp")))
    else:
        work = Path(opts.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "data", "run", "mnt", "cache", "logs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    st = os.statvfs(work)
    free = st.f_bavail * st.f_frsize
    need = NEEDS_GB * 10**9 + (opts.w13_size + 2 * GIB if "W13" in opts.workloads else 0) \
        + (workloads.W15_STREAMS * workloads.W15_SIZE if "W15" in opts.workloads else 0)
    if free < need:
        say(f"bench.sh: {work} has {free // 10**9} GB free; the benchmark needs about {-(-need // 10**9)} GB")
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
        return 1
    # Copies, so that a rebuild during the run does not change what is measured.
    for name in ("s3mount", "s3mount-bench"):
        shutil.copy2(target / "release" / name, work / "bin" / name)

    b = Bench(repo, opts, work, keep_work)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    status = 0
    try:
        start_garage(b)
        start_proxies(b)
        prepare_data(b, run_order)
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        t_start = time.monotonic()
        for r in opts.rtts:
            b.use_rtt(r)
            for cid, arg, results, w in run_order:
                for run in range(1, opts.runs + 1):
                    for t in opts.tools:
                        tool = tools.TOOLS[t]
                        if tool.runs(w):
                            run_case(b, cid, arg, results, w, tool, run)
        print_report(b, cmdline, started, t_start)
    except KeyboardInterrupt:
        say("")
        status = 130
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except (subprocess.CalledProcessError, OSError, StepFailed) as e:
        say(f"bench.sh: {e}")
        status = 1
    finally:
        cleanup(b, status)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        # Before anything was started (the build, say); after, main cleans up.
        say("")
        sys.exit(130)
