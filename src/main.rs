use std::process::ExitCode;

use clap::Parser;
use s3mount::config::Cli;
use s3mount::daemon::{self, Readiness};

use s3mount::mount::{self, MountConfig};
use s3mount::mountpoint;

fn main() -> ExitCode {
    // Keep the memory held close to the memory used. glibc gives each thread that
    // allocates its own arena, and raises its mmap threshold after each large free,
    // so that parts and GET buffers end up in arenas that keep freed memory: cap the
    // arenas, and keep buffers of 4 MiB and more in mmap, returned when freed.
    // SAFETY: called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
    // The cache directory holds the bucket's data: nothing s3mount creates is
    // for other users to read.
    s3mount::private::restrict_umask();
    let cli = Cli::parse();
    let config = mountpoint::check(&cli.mountpoint).and_then(|mp| MountConfig::new(cli, mp));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("s3mount: {e}");
            return ExitCode::FAILURE;
        }
    };
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
