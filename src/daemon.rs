//! Going to the background once the mount is ready, like s3fs and mount-s3.
//!
//! The process forks before anything starts threads. The child mounts and reports
//! through a pipe; the parent waits for that report and exits 0 when the mount is
//! ready, or prints the child's error and exits 1.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid};

/// The child's end of the pipe: say once whether the mount came up.
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// For a foreground run: nobody waits.
    pub fn none() -> Self {
        Self { pipe: None }
    }

    /// The mount answers: the waiting parent exits 0, and a service manager
    /// (systemd, `Type=notify`, with NOTIFY_SOCKET) hears READY=1.
    pub fn ready(&mut self) {
        notify(&[sd_notify::NotifyState::Ready]);
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"ok\n");
            // From now on nobody reads the terminal output of the background process.
            detach_stdio();
        }
    }

    pub fn failed(&mut self, message: &str) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(message.as_bytes());
        }
    }
}

/// Fork; run `child` in the background process, and in this one wait for its report.
pub fn background(child: impl FnOnce(Readiness) -> ExitCode) -> ExitCode {
    // Close-on-exec: a helper the child runs (fusermount3) must not keep the pipe open.
    let (read_end, write_end) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("s3mount: cannot create a pipe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: no threads have been started yet (the runtime is built in the child).
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("s3mount: cannot fork: {e}");
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(write_end);
            wait_for_child(read_end)
        }
        Ok(ForkResult::Child) => {
            drop(read_end);
            let _ = setsid();
            child(Readiness {
                pipe: Some(File::from(write_end)),
            })
        }
    }
}

fn wait_for_child(read_end: OwnedFd) -> ExitCode {
    let mut report = String::new();
    let _ = File::from(read_end).read_to_string(&mut report);
    match report.as_str() {
        "ok\n" => ExitCode::SUCCESS,
        "" => {
            eprintln!("s3mount: the background process exited before the mount was ready");
            ExitCode::FAILURE
        }
        message => {
            eprintln!("s3mount: {}", message.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// The unmount begins: a service manager hears STOPPING=1.
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// Tell the service manager, if there is one (nothing without NOTIFY_SOCKET).
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = dup2_stdin(&null);
        let _ = dup2_stdout(&null);
        let _ = dup2_stderr(&null);
    }
}
