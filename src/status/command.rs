//! The `s3mount status` command: ask this user's mounts over their sockets and
//! show what they say.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use super::Report;
use super::socket::{self, Reply};

/// How often `--watch` refreshes.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Show what running mounts are doing: uploads, failures, conflicts, the cache,
/// requests, CloudFront.
#[derive(Parser, Debug)]
#[command(name = "s3mount status")]
pub struct StatusCli {
    /// The mount to show [default: every s3mount mount of this user]
    pub mountpoint: Option<PathBuf>,

    /// Print JSON for scripts: one report, or with no MOUNTPOINT a list of them
    #[arg(long)]
    pub json: bool,

    /// Refresh every second until interrupted (or until the mount ends)
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,

    /// Change the log level of the mount(s): error, warn, info, debug or trace
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// Whether `args` (the whole command line) ask for `s3mount status`: the word
/// `status` and at most one more argument that is not an option (or the value
/// of `--log-level`). A bucket named `status` is mounted as `status:`
/// (`s3mount status: /mnt`); `s3mount status /mnt` is the status of /mnt.
pub fn asked(args: &[OsString]) -> bool {
    if args.get(1).is_none_or(|a| a != "status") {
        return false;
    }
    let mut positional = 0;
    let mut after_value_option = false;
    for arg in &args[2..] {
        let text = arg.to_string_lossy();
        if after_value_option {
            after_value_option = false;
        } else if text == "--log-level" {
            after_value_option = true;
        } else if !text.starts_with('-') {
            positional += 1;
        }
    }
    positional <= 1
}

pub fn run(args: Vec<OsString>) -> ExitCode {
    let cli = StatusCli::parse_from(
        std::iter::once(OsString::from("s3mount status")).chain(args.into_iter().skip(2)),
    );
    match show(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3mount status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn show(cli: &StatusCli) -> Result<(), String> {
    let wanted = cli
        .mountpoint
        .as_ref()
        .map(|m| {
            m.canonicalize()
                .map_err(|e| format!("{}: {e}", m.display()))
        })
        .transpose()?;
    let sockets = mounts(wanted.as_deref())?;
    if let Some(level) = &cli.log_level {
        for (socket, report) in &sockets {
            match socket::ask(socket, &format!("log-level {level}")) {
                Ok(Reply::LogLevel(now)) => {
                    println!("{}: log level {now}", report.mountpoint.display());
                }
                Ok(Reply::Error(e)) => return Err(e),
                Ok(_) => return Err("the mount did not change its log level".into()),
                Err(e) => return Err(format!("{}: {e}", report.mountpoint.display())),
            }
        }
        return Ok(());
    }
    if cli.json {
        let reports: Vec<&Report> = sockets.iter().map(|(_, r)| r).collect();
        let text = match (&wanted, reports.as_slice()) {
            (Some(_), [one]) => serde_json::to_string_pretty(one),
            _ => serde_json::to_string_pretty(&reports),
        };
        println!("{}", text.map_err(|e| e.to_string())?);
        return Ok(());
    }
    let mut reports: Vec<Report> = sockets.into_iter().map(|(_, r)| r).collect();
    loop {
        let screen = if reports.is_empty() {
            "No s3mount mounts of this user.\n".to_string()
        } else {
            reports
                .iter()
                .map(Report::render)
                .collect::<Vec<_>>()
                .join("\n")
        };
        if !cli.watch {
            print!("{screen}");
            return Ok(());
        }
        // Home, clear, then the screen: a steady view, not a scroll.
        print!("\x1b[H\x1b[2J{screen}");
        std::thread::sleep(WATCH_EVERY);
        reports = match mounts(wanted.as_deref()) {
            Ok(found) => found.into_iter().map(|(_, r)| r).collect(),
            // The mount watched has ended.
            Err(e) => {
                println!("{e}");
                return Ok(());
            }
        };
    }
}

/// The sockets of this user's mounts and what each says, only the one on
/// `mountpoint` if given (an error if there is none).
fn mounts(mountpoint: Option<&Path>) -> Result<Vec<(PathBuf, Report)>, String> {
    let mut found = Vec::new();
    for dir in socket::dirs().iter().filter(|d| d.exists()) {
        // Not ours (another user made it first in /tmp): nothing of ours in it.
        if let Err(e) = socket::check(dir) {
            eprintln!("s3mount status: skipped {e}");
            continue;
        }
        socket::remove_stale(dir);
        for path in socket::sockets(dir) {
            if let Ok(Reply::Status(report)) = socket::ask(&path, "status")
                && mountpoint.is_none_or(|m| m == report.mountpoint)
            {
                found.push((path, *report));
            }
        }
    }
    match mountpoint {
        Some(m) if found.is_empty() => {
            Err(format!("no s3mount mount of this user on {}", m.display()))
        }
        _ => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn status_is_told_from_a_mount_of_a_bucket_named_status() {
        assert!(asked(&args("s3mount status")));
        assert!(asked(&args("s3mount status /mnt --json")));
        assert!(asked(&args("s3mount status --log-level debug /mnt")));
        assert!(asked(&args("s3mount status /srv/site --log-level debug")));
        assert!(!asked(&args("s3mount status /mnt/a /mnt/b")));
        assert!(!asked(&args("s3mount status: /mnt")));
        assert!(!asked(&args("s3mount my-bucket /mnt")));
    }
}
