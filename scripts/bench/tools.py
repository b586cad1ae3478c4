"""The tools the benchmark compares, one adapter each: how to install it, mount
its bucket, and what it cannot do.

A mount adapter gives the command line of a daemon that stays in the foreground
(the harness runs it, waits for the mount, and takes it down). `cache` is the one
directory where the tool keeps what it puts on local disk: W13 puts it on a small
filesystem. `cache_size`, where given (W14), is the most disk cache a tool with a
limit may use. `cannot` maps a workload to the reason its cells show instead of a
figure; `runs` says whether a tool runs a workload at all (the others show "-")."""

import os
import re
import shutil
import subprocess


class Tool:
    name = ""
    direct = False  # no mount: the workloads' direct S3 steps (s3mount-bench)
    keeps_cache = True  # a fresh mount on the same cache directory may find W2's reads there
    cannot = {}  # workload -> "n/a: why"
    apt = None  # (command, Debian package) installed where missing
    counts_requests = False  # logs "S3 requests: N" at unmount; answers `status --json`

    @property
    def bucket(self):
        return f"bench-{self.name}"

    def runs(self, workload):
        return True

    def prepare(self, repo):
        """Install or find what the tool needs (before anything is measured)."""

    def mount_argv(self, bench, mnt, cache, log, cache_size=None):
        """(argv, env) of the daemon, in the foreground, talking to bench.endpoint."""
        raise NotImplementedError

    def version(self, bench):
        return ""


def first_line(argv, name):
    """The first line a tool prints of its version, or "NAME not installed"."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out.splitlines()[0] if out.strip() else f"{name} not installed"


class S3mount(Tool):
    name = "s3mount"
    counts_requests = True
    extra = []

    def mount_argv(self, bench, mnt, cache, log, cache_size=None):
        argv = [bench.bin / "s3mount", self.bucket, mnt, "--foreground", *self.extra,
                "--endpoint-url", bench.endpoint, "--region", bench.env["AWS_REGION"],
                "--force-path-style", "--cache-dir", cache, "--log-file", log]
        if cache_size:
            argv += ["--cache-size", f"{cache_size >> 20}MiB"]
        return argv, bench.tool_env()


class S3mountBg(S3mount):
    """s3mount with --background-uploads: close returns once the file is safe on
    local disk. Only in the workloads that write."""

    name = "s3mount-bg"
    extra = ["--background-uploads"]

    def runs(self, workload):
        return workload.writes


class S3fs(Tool):
    name = "s3fs"
    apt = ("s3fs", "s3fs")

    def mount_argv(self, bench, mnt, cache, log, cache_size=None):
        # Without use_cache s3fs keeps no disk cache; its temporary files (what
        # it uploads) go to tmpdir.
        return ["s3fs", self.bucket, mnt, "-f", "-o", f"passwd_file={bench.s3fs_passwd}",
                "-o", f"url={bench.endpoint}", "-o", "use_path_request_style",
                "-o", f"endpoint={bench.env['AWS_REGION']}", "-o", f"tmpdir={cache}"], bench.tool_env()

    def version(self, bench):
        return first_line(["s3fs", "--version"], self.name).replace(
            "Amazon Simple Storage Service File System", "s3fs")


class Rclone(Tool):
    name = "rclone"
    apt = ("rclone", "rclone")

    def mount_argv(self, bench, mnt, cache, log, cache_size=None):
        env = bench.tool_env()
        env.pop("AWS_CA_BUNDLE", None)
        env.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENV_AUTH": "false",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": bench.env["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": bench.env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_BENCH_REGION": bench.env["AWS_REGION"],
            "RCLONE_CONFIG_BENCH_ENDPOINT": bench.endpoint,
        })
        argv = ["rclone", "mount", f"bench:{self.bucket}", mnt,
                "--vfs-cache-mode", "writes", "--cache-dir", cache]
        if cache_size:
            argv += ["--vfs-cache-max-size", f"{cache_size >> 20}M"]
        return argv, env

    def version(self, bench):
        return first_line(["rclone", "version"], self.name)


MOUNT_S3_VERSION = "1.24.0"


def mount_s3_path():
    tools = os.environ.get("S3MOUNT_TOOLS", os.path.expanduser("~/.cache/s3mount-tools"))
    return os.path.join(tools, f"mount-s3-{MOUNT_S3_VERSION}", "bin", "mount-s3")


class MountS3(Tool):
    """Mountpoint for Amazon S3, with its defaults as scripts/profile.sh runs it:
    no local cache (reads and writes stream), overwrites and deletes allowed."""

    name = "mount-s3"
    keeps_cache = False
    cannot = {
        # rsync writes each file under a temporary name, sets its times, and
        # renames it: EPERM for the times, and no rename.
        "W10": "n/a: no rename, utimes",
        # tar sets the mode and times of each directory it made: EPERM.
        "W9": "n/a: no chmod, utimes",
    }
    path = None

    def prepare(self, repo):
        out = subprocess.run([repo / "scripts" / "mount-s3.sh", "install"],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
        self.path = out.strip().splitlines()[-1] if out.strip() else mount_s3_path()

    def mount_argv(self, bench, mnt, cache, log, cache_size=None):
        # No disk cache (its --cache option is off by default): `cache` stays empty.
        return [self.path or mount_s3_path(), self.bucket, mnt,
                "--endpoint-url", bench.endpoint, "--region", bench.env["AWS_REGION"],
                "--force-path-style", "--allow-overwrite", "--allow-delete",
                "--foreground"], bench.tool_env()

    def version(self, bench):
        return first_line([self.path or mount_s3_path(), "--version"], self.name)


class Direct(Tool):
    """s3mount-bench: the same aws-sdk-s3 as s3mount, without FUSE."""

    name = "direct"
    direct = True
    cannot = {
        "W13": "n/a: no stream input",
        "W14": "n/a: no cache",
        "W15": "n/a: no stream input",
    }


TOOLS = {t.name: t for t in (S3mount(), S3mountBg(), S3fs(), Rclone(), MountS3(), Direct())}
ALL_TOOLS = list(TOOLS)
# The tools s3mount is compared with in "s3mount / best peer".
PEERS = ["s3fs", "rclone", "mount-s3"]


def missing_packages(tools):
    return [pkg for t in tools if t.apt and not shutil.which(t.apt[0]) for pkg in [t.apt[1]]]


def requests_at_unmount(log):
    """The count s3mount logs at unmount (`S3 requests: N (...)`), or None."""
    try:
        text = open(log, errors="replace").read()
    except OSError:
        return None
    found = re.findall(r"S3 requests: (\d+)", text)
    return found[-1] if found else None
