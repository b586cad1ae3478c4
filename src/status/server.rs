//! The mount's side of the status socket: answers `status` with a [`Report`]
//! and `log-level LEVEL` by changing the log level, to this user (and root)
//! only. The socket goes when the mount ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Report;
use super::socket::{self, Reply};
use crate::logging::LogControl;

/// A request is one short line, read within this time (and the answer
/// written within it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: u64 = 1024;

pub type Reporter = Arc<dyn Fn() -> Report + Send + Sync>;

/// The socket file of a running mount, removed when dropped.
pub struct StatusSocket {
    path: PathBuf,
}

impl StatusSocket {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listen on this process's socket (in the runtime of `rt`), answering with
/// what `report` says.
pub fn start(
    rt: &tokio::runtime::Handle,
    report: Reporter,
    log: Arc<LogControl>,
) -> Result<StatusSocket, String> {
    let dir = socket::dir();
    socket::prepare(&dir)?;
    socket::remove_stale(&dir);
    let path = socket::path(&dir, std::process::id());
    // One left by an earlier process that had this pid.
    let _ = std::fs::remove_file(&path);
    let listener = {
        let _runtime = rt.enter();
        UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, report.clone(), log.clone()));
                }
                Err(e) => {
                    tracing::warn!("status socket: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(StatusSocket { path })
}

async fn answer(stream: UnixStream, report: Reporter, log: Arc<LogControl>) {
    let me = nix::unistd::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(peer) if peer.uid() == me || peer.uid() == 0 => {}
        // The directory keeps others out; this is the second lock.
        _ => return,
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(_))) {
        return;
    }
    let reply = match line.trim().split_once(' ') {
        None if line.trim() == "status" => Reply::Status(Box::new(report())),
        Some(("log-level", level)) => match log.set_level(level.trim()) {
            Ok(()) => Reply::LogLevel(level.trim().to_string()),
            Err(e) => Reply::Error(e),
        },
        _ => Reply::Error(format!("unknown request {:?}", line.trim())),
    };
    let Ok(mut text) = serde_json::to_string(&reply) else {
        return;
    };
    text.push('\n');
    // A client that does not read is dropped, not waited for.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(text.as_bytes())).await;
}
