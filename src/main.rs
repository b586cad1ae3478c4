use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use s3mount::config::Cli;
use s3mount::daemon::{self, Readiness};

use s3mount::mount::{self, MountConfig};
use s3mount::mountpoint;

// mimalloc: with glibc's malloc, the daemon spent 9 to 12 CPU seconds on a 2 GiB
// cp where it spends 6 with mimalloc (page faults of fresh 1 MiB and 8 MiB
// buffers), and its peak memory stays within bounds (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The cache directory holds the bucket's data: nothing s3mount creates is
    // for other users to read.
    s3mount::private::restrict_umask();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if s3mount::status::command::asked(&args) {
        return s3mount::status::command::run(args);
    }
    // mount(8), fstab and mount.fuse3 pass options as `-o a=b,c`.
    let line = match s3mount::mount_args::command_line(args, &Cli::command()) {
        Ok(line) => line,
        Err(e) => {
            eprintln!("s3mount: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(line.args);
    let config = mountpoint::check(&cli.mountpoint, cli.allow_nonempty)
        .and_then(|mp| MountConfig::new(cli, mp));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("s3mount: {e}");
            return ExitCode::FAILURE;
        }
    };
    if line.fake {
        // mount -f: everything checked, nothing mounted.
        return ExitCode::SUCCESS;
    }
    if config.foreground {
        match mount::run(config, &mut Readiness::none()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("s3mount: {e}");
                ExitCode::FAILURE
            }
        }
    } else {
        daemon::background(|mut readiness| match mount::run(config, &mut readiness) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                readiness.failed(&e);
                ExitCode::FAILURE
            }
        })
    }
}
