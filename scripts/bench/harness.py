"""What every case stands on: the processes, mounts, proxies and small
filesystems the benchmark starts (each registered until it is gone, so that a
failed case and the exit can take it down), bounded steps, the page cache, the
daemon's figures from /proc, and the peak use of a filesystem."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

EXIT_LIMIT = 120  # seconds a mount daemon may take to exit after its unmount


class StepFailed(Exception):
    """A step of a case failed; the message says how (it goes to the case's log)."""


def alive(popen):
    """Whether a child is still running (poll() reaps it when it is not)."""
    return popen.poll() is None


def is_mounted(path):
    path = str(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and unescape_mountinfo(fields[4]) == path:
                return True
    return False


def unescape_mountinfo(s):
    # Spaces, tabs, newlines and backslashes are octal escapes in mountinfo.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        s = s.replace(code, char)
    return s


def kill_group(popen, grace=10.0):
    """TERM the process group of a child started in a session of its own, then
    KILL it after `grace` seconds if the child still runs."""
    if popen.poll() is not None:
        # The leader is gone; others of its group may not be.
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def cpu_ticks(pid):
    """User + system CPU of a process so far, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    """Peak RSS (VmHWM) of a process so far, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise StepFailed(f"no VmHWM for process {pid}")


class DiskPeak:
    """The most space used on a filesystem, sampled every 0.2 s in a thread."""

    def __init__(self, path, every=0.2):
        self.path = str(path)
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def size(self):
        st = os.statvfs(self.path)
        return st.f_blocks * st.f_frsize

    def used(self):
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def _run(self):
        while True:
            try:
                self.peak = max(self.peak, self.used())
            except OSError:
                pass
            if self._stop.wait(self.every):
                return

    def __enter__(self):
        self.peak = self.used()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        try:
            self.peak = max(self.peak, self.used())
        except OSError:
            pass


class Mount:
    """A mount daemon in the foreground of a child process of its own."""

    def __init__(self, tool, popen, mnt, log):
        self.tool = tool
        self.popen = popen
        self.pid = popen.pid
        self.mnt = Path(mnt)
        self.log = Path(log)

    def cpu_ticks(self):
        return cpu_ticks(self.pid)

    def cpu_since(self, ticks):
        """Seconds of CPU (user + system) the daemon spent since `ticks`."""
        return f"{(self.cpu_ticks() - ticks) / CLK_TCK:.2f}"

    def peak_rss(self):
        return str(peak_rss_mib(self.pid))


class Harness:
    """The processes, mounts and filesystems the benchmark has up, and how to
    take each down."""

    def __init__(self, work):
        self.work = Path(work)
        self.mounts = {}  # pid -> Mount
        self.steps = set()  # Popen of steps running now
        self.servers = []  # (name, Popen): delay proxies
        self.tmpfs = []  # mountpoints of the small filesystems of W13

    # ------------------------------------------------------------ steps
    def start(self, argv, *, log, stdout=None, stderr=None, stdin=None, env=None):
        """Start a step in a session of its own (so that the whole of it can be
        stopped, and Ctrl-C reaches the harness only)."""
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=stderr if stderr is not None else log,
            env=env,
            start_new_session=True,
        )
        self.steps.add(p)
        return p

    def finish(self, p, limit, what):
        """Wait for a step at most `limit` seconds; stop it (TERM, KILL 10 s
        later) when it runs over. Returns (stdout, stderr) when captured."""
        try:
            out, err = p.communicate(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            kill_group(p)
            self.steps.discard(p)
            raise StepFailed(f"{what} ran over {limit:.0f} s and was stopped")
        self.steps.discard(p)
        return out, err

    def stop_steps(self):
        for p in list(self.steps):
            kill_group(p, grace=5.0)
            self.steps.discard(p)

    # ------------------------------------------------------------ page cache
    def bounded_sync(self, log=None):
        """A sync that a hung mount (of another tool, say) cannot hold up for long."""
        p = subprocess.Popen(["sync"], start_new_session=True)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            msg = "sync did not finish within 60 s; going on without it\n"
            if log is not None:
                log.write(msg)
                log.flush()

    def drop_caches(self, log=None):
        self.bounded_sync(log)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    # ------------------------------------------------------------ mounts
    def mount(self, tool, argv, env, mnt, log_path, stderr_path):
        """Start a mount daemon and wait (30 s at most) for its mount."""
        mnt = Path(mnt)
        mnt.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "ab") as err:
            p = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        m = Mount(tool, p, mnt, log_path)
        self.mounts[p.pid] = m
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if is_mounted(mnt):
                return m
            if not alive(p):
                tail = "".join(tail_lines(path, 20) for path in {Path(log_path), Path(stderr_path)})
                raise StepFailed(f"{tool} exited before mounting:\n{tail}")
            time.sleep(0.1)
        raise StepFailed(f"{tool} did not mount within 30 s")

    def unmount(self, m):
        """Unmount (retrying while busy) and wait for the daemon to exit; returns
        its exit status."""
        for _ in range(40):
            r = subprocess.run(["fusermount3", "-u", str(m.mnt)], stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                break
            time.sleep(0.25)
        if is_mounted(m.mnt):
            raise StepFailed(f"cannot unmount {m.mnt}")
        try:
            status = m.popen.wait(timeout=EXIT_LIMIT)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"{m.tool} did not exit within {EXIT_LIMIT} s of its unmount")
        self.mounts.pop(m.pid, None)
        return status

    def release_mounts(self):
        """Take down every mount still up: lazy unmount, then the daemon (TERM,
        KILL after 5 s)."""
        for pid, m in list(self.mounts.items()):
            if is_mounted(m.mnt):
                subprocess.run(["fusermount3", "-uz", str(m.mnt)], stderr=subprocess.DEVNULL)
            if alive(m.popen):
                try:
                    m.popen.terminate()
                    m.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    m.popen.kill()
                    try:
                        m.popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
                except ProcessLookupError:
                    pass
            self.mounts.pop(pid, None)

    # ------------------------------------------------------------ small filesystems
    def mount_tmpfs(self, path, size):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "s3mount-bench", str(path)],
            check=True,
        )
        self.tmpfs.append(path)
        return path

    def unmount_tmpfs(self, path, lazy=False):
        path = Path(path)
        if is_mounted(path):
            subprocess.run(["umount"] + (["-l"] if lazy else []) + [str(path)], check=not lazy)
        if path in self.tmpfs:
            self.tmpfs.remove(path)

    def release_tmpfs(self):
        for path in list(self.tmpfs):
            try:
                self.unmount_tmpfs(path, lazy=True)
            except (OSError, subprocess.CalledProcessError):
                pass

    # ------------------------------------------------------------ servers
    def start_server(self, name, argv, log_path, ready, env=None, timeout=10):
        """Start a long-lived helper (a delay proxy) and wait until its log has a
        line for which ready(line) gives a value; returns that value."""
        with open(log_path, "ab") as log:
            p = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.servers.append((name, p))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in Path(log_path).read_text(errors="replace").splitlines():
                value = ready(line)
                if value:
                    return value
            if not alive(p):
                break
            time.sleep(0.1)
        raise StepFailed(f"{name} did not start:\n{tail_lines(log_path, 20)}")

    def stop_servers(self):
        for name, p in self.servers:
            kill_group(p, grace=5.0)
        self.servers = []

    # ------------------------------------------------------------ all of it
    def release_all(self):
        self.stop_steps()
        self.release_mounts()
        self.release_tmpfs()
        self.stop_servers()


def tail_lines(path, n):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "".join(line + "\n" for line in lines[-n:])
