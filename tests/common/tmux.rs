//! Interactive programs (editors) driven through a terminal of a private tmux server.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::wait_until;

/// A program running in a terminal of a private tmux server, killed on drop.
pub struct Tmux {
    /// Holds the server's socket.
    dir: tempfile::TempDir,
}

impl Tmux {
    pub fn start(program: &[&str]) -> Self {
        let tmux = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // The server's working directory must not be on the mount, or it keeps it busy.
        let out = tmux
            .command()
            .current_dir("/")
            .args(["new-session", "-d", "-x", "120", "-y", "40"])
            .args(program)
            .output()
            .expect("tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    /// vim on `path` with no vimrc and no viminfo, but the default swap file and
    /// write backup. The default 'backupskip' skips the backup for files under
    /// /tmp, where the tests mount: it is cleared so that :w renames the file to
    /// `name~` as it would elsewhere.
    pub fn vim(path: &std::path::Path) -> Self {
        let path = path.to_str().expect("a UTF-8 path");
        Self::start(&[
            "vim",
            "-u",
            "NONE",
            "-N",
            "-i",
            "NONE",
            "--cmd",
            "set backupskip=",
            path,
        ])
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(self.dir.path().join("socket"))
            .args(["-f", "/dev/null"])
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("tmux")
    }

    /// Type `text` as it is.
    pub fn type_text(&self, text: &str) {
        let out = self.run(&["send-keys", "-l", text]);
        assert!(out.status.success(), "send-keys {text:?}");
    }

    /// Press keys given by their tmux names (Enter, Escape, C-o, ...).
    pub fn press(&self, keys: &[&str]) {
        let out = self.run(&[&["send-keys"], keys].concat());
        assert!(out.status.success(), "send-keys {keys:?}");
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    /// Wait until the screen satisfies `cond`.
    pub fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_text(&self, text: &str) {
        self.wait_screen(text, |s| s.contains(text));
    }

    /// Wait until the program has exited (its session, the only one, is gone).
    pub fn wait_exit(&self) {
        wait_until(Duration::from_secs(20), "the editor to exit", || {
            !self.run(&["has-session"]).status.success()
        });
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}
