use std::process::ExitCode;

use clap::Parser;
use s3mount::config::Cli;
use s3mount::daemon::{self, Readiness};

use s3mount::mount::{self, MountConfig};
use s3mount::mountpoint;

fn main() -> ExitCode {
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
