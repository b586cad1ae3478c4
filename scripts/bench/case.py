"""One case: one workload (or W11 at one size), for one tool, at one round trip,
in one run. What its steps need: bounded commands logged to the case's log, the
tool's mount, the page cache, results, and objects written once per bucket."""

import json
import shutil
import subprocess
import time

from harness import StepFailed
import tools as tools_mod


class CaseFailed(StepFailed):
    """A failure whose cells say more than "error" (e.g. "error: ENOSPC")."""

    def __init__(self, message, cell="error"):
        super().__init__(message)
        self.cell = cell


def field(name, line):
    """The value of NAME in a line of name=value words (s3mount-bench's output)."""
    for word in line.split():
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


class Case:
    def __init__(self, bench, case_id, arg, tool, rtt, run, log_path, limit):
        self.b = bench
        self.h = bench.h
        self.id = case_id
        self.arg = arg
        self.tool = tool
        self.rtt = rtt
        self.run_no = run
        self.log_path = log_path
        self.log = open(log_path, "a", buffering=1)
        self.limit_s = limit
        self.deadline = time.monotonic() + limit
        self.cleanups = []  # run after the case, in reverse order, failed or not

    # ------------------------------------------------------------ names
    @property
    def bucket(self):
        return self.tool.bucket

    @property
    def endpoint(self):
        return self.b.endpoint

    @property
    def work(self):
        return self.b.work

    def say(self, text):
        self.log.write(text.rstrip("\n") + "\n")
        self.log.flush()

    # ------------------------------------------------------------ steps
    def step_limit(self, limit=None):
        step = limit if limit is not None else self.b.step_limit
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepFailed(f"the case took over {self.limit_s:.0f} s; stopped")
        return min(step, left)

    def run(self, argv, *, stdout=None, capture=False, capture_err=False, limit=None,
            env=None, check=True, what=None):
        """Run a step for at most its limit (BENCH_STEP_LIMIT, default 600 s, and
        what is left of the case's). stdout goes to the log, to a file (a path),
        or is returned (capture); stderr goes to the log unless captured (then it
        is returned too, and logged). Fails unless the command exits 0."""
        lim = self.step_limit(limit)
        argv = [str(a) for a in argv]
        self.say("+ " + " ".join(argv))
        out_file = None
        if capture:
            out = subprocess.PIPE
        elif stdout is not None:
            out = out_file = open(stdout, "wb")
        else:
            out = self.log
        try:
            p = self.h.start(argv, log=self.log, stdout=out,
                             stderr=subprocess.PIPE if capture_err else None,
                             env=env if env is not None else self.b.tool_env())
            so, se = self.h.finish(p, lim, what or argv[0])
        finally:
            if out_file:
                out_file.close()
        so = so.decode(errors="replace") if so is not None else ""
        se = se.decode(errors="replace") if se is not None else ""
        if capture and so:
            self.say(so if len(so) < 4000 else so[:4000] + "...")
        if se:
            self.say(se)
        if check and p.returncode != 0:
            raise StepFailed(f"{what or argv[0]} exited with status {p.returncode}")
        return so if not capture_err else (so, se)

    def bench(self, *args, measured=True, limit=None):
        """s3mount-bench: through the current round trip (measured), or straight
        to Garage (setup and the checks that objects arrived)."""
        argv = [self.b.bench_bin]
        if measured:
            argv += ["--endpoint-url", self.endpoint]
        return self.run(argv + list(args), capture=True, limit=limit)

    def drop_caches(self):
        self.h.drop_caches(self.log)

    def result(self, name, value, tool=None):
        self.b.record(name, tool or self.tool.name, self.rtt, self.run_no, value)

    # ------------------------------------------------------------ mounts
    def mount(self, name, cache=None, cache_size=None):
        """The tool's bucket at WORK/mnt/TOOL through the current round trip. Without
        `cache` the mount gets an empty cache directory of its own."""
        t = self.tool
        if cache is None:
            cache = self.work / "cache" / f"{t.name}-{name}-{self.run_no}"
            shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        mnt = self.work / "mnt" / t.name
        log = self.b.logs / f"{name}-{t.name}-{self.rtt}-{self.run_no}.mount.log"
        log.write_text("")
        stderr = log.with_suffix(".stderr") if t.counts_requests else log
        argv, env = t.mount_argv(self.b, mnt, cache, log, cache_size)
        self.say("+ " + " ".join(str(a) for a in argv) + " &")
        return self.h.mount(t.name, argv, env, mnt, log, stderr)

    def unmount(self, m, name):
        """Unmount, wait for the daemon to exit, and for s3mount record the number of
        S3 requests it logged at unmount (result NAME of TOOL.req)."""
        status = self.h.unmount(m)
        if self.tool.counts_requests:
            # rclone and s3fs exit non-zero on a normal unmount in some versions;
            # s3mount must not.
            if status != 0:
                raise StepFailed(f"{self.tool.name} exited with status {status}")
            n = tools_mod.requests_at_unmount(m.log)
            self.result(name, n or "?", tool=self.tool.name + ".req")

    def requests(self, m, kind):
        """How many requests of one kind (GetObject, ...) s3mount made so far, from
        `s3mount status --json`."""
        out = self.run([self.b.bin / "s3mount", "status", m.mnt, "--json"], capture=True, limit=30)
        return int(json.loads(out).get("requests", {}).get(kind, 0))

    # ------------------------------------------------------------ data
    def setup_once(self, what):
        """Objects a workload reads, written straight to Garage once per bucket."""
        key = (self.tool.name, what)
        if key in self.b.setup_done:
            return
        bucket = self.bucket
        work = self.work
        if what == "read":
            self.bench("put", work / "data" / "read.bin", bucket, "read/big.bin", measured=False)
        elif what == "w5":
            self.bench("put-many", bucket, "w5/", 10000, 1024, measured=False)
        elif what == "w7":
            self.bench("put-many", bucket, "w7/", 100, 1024, "--dirs", 100, measured=False)
        elif what.startswith("w11-"):
            self.bench("put-many", bucket, what + "/", what[4:], 1024, "--jobs", 64, measured=False)
        elif what == "w12":
            for i in range(4):
                self.bench("put", work / "data" / f"w12-{i}.bin", bucket, f"w12/{i}.bin",
                           measured=False)
        elif what == "w14":
            self.bench("put-many", bucket, "w14/", 100, 16384, measured=False)
        else:
            raise ValueError(what)
        self.b.setup_done.add(key)

    def read_all(self, path, size):
        """Read a file through the mount with dd; fails unless all SIZE bytes came."""
        _, err = self.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_err=True)
        if not any(line.startswith(f"{size} bytes") for line in err.splitlines()):
            raise StepFailed(f"read {path}: {err.strip()}")

    def close(self):
        self.log.close()
