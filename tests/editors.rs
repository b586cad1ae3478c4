//! Editors saving files on the mount, each in its own way: vim (swap file, write
//! backup), nano (truncate and rewrite), emacs with file-precious-flag (write a
//! temporary file, rename it over the original). The object must end with exactly
//! the new text and nothing the editor made on the side may stay in the bucket.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestBucket, run_bounded};

/// Poll `cond` until it holds; panics with `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A program running in a terminal of a private tmux server, killed on drop.
struct Tmux {
    /// Holds the server's socket.
    dir: tempfile::TempDir,
}

impl Tmux {
    fn start(program: &[&str]) -> Self {
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

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(self.dir.path().join("socket"))
            .args(["-f", "/dev/null"])
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("tmux")
    }

    /// Type `text` as it is.
    fn type_text(&self, text: &str) {
        let out = self.run(&["send-keys", "-l", text]);
        assert!(out.status.success(), "send-keys {text:?}");
    }

    /// Press keys given by their tmux names (Enter, Escape, C-o, ...).
    fn press(&self, keys: &[&str]) {
        let out = self.run(&[&["send-keys"], keys].concat());
        assert!(out.status.success(), "send-keys {keys:?}");
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    /// Wait until the screen satisfies `cond`.
    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) {
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

    fn wait_for_text(&self, text: &str) {
        self.wait_screen(text, |s| s.contains(text));
    }

    /// Wait until the program has exited (its session, the only one, is gone).
    fn wait_exit(&self) {
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

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn vim_saves_in_place_and_leaves_no_swap_file() {
    let bucket = TestBucket::new("vim");
    bucket.put("docs/notes.txt", "first line\nsecond line\n");
    let mount = Mount::new(&bucket, &[]);
    let file = mount.join("docs/notes.txt");
    let swap = mount.join("docs/.notes.txt.swp");
    let path = file.to_str().unwrap();
    // No vimrc and no viminfo, but the default swap file and write backup. The
    // default 'backupskip' skips the backup for files under /tmp, where the test
    // mounts: clear it so :w renames the file to notes.txt~ as it would elsewhere.
    let vim = Tmux::start(&[
        "vim",
        "-u",
        "NONE",
        "-N",
        "-i",
        "NONE",
        "--cmd",
        "set backupskip=",
        path,
    ]);
    vim.wait_for_text("second line");
    wait_until(
        Duration::from_secs(20),
        "vim's swap file in the mount",
        || swap.exists(),
    );

    vim.type_text("Gothird line");
    vim.wait_for_text("-- INSERT --");
    vim.press(&["Escape"]);
    vim.wait_screen("normal mode", |s| !s.contains("-- INSERT --"));
    vim.type_text(":w");
    vim.press(&["Enter"]);
    vim.wait_for_text("written");
    assert_eq!(
        bucket.get("docs/notes.txt").unwrap(),
        b"first line\nsecond line\nthird line\n"
    );
    assert!(swap.exists(), "the swap file must stay while vim runs");

    // Drop the first line, open a new one above, and quit with :wq.
    vim.type_text("ggdd");
    vim.wait_screen("the first line deleted", |s| !s.contains("first line"));
    vim.type_text("Ozeroth line");
    vim.wait_for_text("-- INSERT --");
    vim.press(&["Escape"]);
    vim.wait_screen("normal mode", |s| !s.contains("-- INSERT --"));
    vim.type_text(":wq");
    vim.press(&["Enter"]);
    vim.wait_exit();

    let expected = "zeroth line\nsecond line\nthird line\n";
    assert_eq!(bucket.get("docs/notes.txt").unwrap(), expected.as_bytes());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    assert!(!swap.exists(), "swap file left in the mount");
    assert_eq!(names_in(&mount.join("docs")), ["notes.txt"]);
    assert_eq!(bucket.keys(), ["docs/notes.txt"]);
    mount.unmount();
}

#[test]
fn nano_truncates_and_rewrites_the_file() {
    let bucket = TestBucket::new("nano");
    bucket.put(
        "todo.txt",
        "a long first line that goes away\nbeta\ngamma\n",
    );
    let mount = Mount::new(&bucket, &[]);
    let file = mount.join("todo.txt");
    let nano = Tmux::start(&["nano", "-I", file.to_str().unwrap()]);
    nano.wait_for_text("gamma");

    // A new first line, then ^K cuts the long line: the file gets shorter, so a
    // save that did not truncate would leave the old tail behind.
    nano.type_text("zero");
    nano.press(&["Enter"]);
    nano.press(&["C-k"]);
    nano.wait_screen("the long line cut", |s| !s.contains("goes away"));
    nano.press(&["C-o"]);
    nano.wait_for_text("File Name to Write");
    nano.press(&["Enter"]);
    nano.wait_for_text("Wrote 3 lines");
    let expected = "zero\nbeta\ngamma\n";
    assert_eq!(bucket.get("todo.txt").unwrap(), expected.as_bytes());
    nano.press(&["C-x"]);
    nano.wait_exit();

    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    assert_eq!(bucket.get("todo.txt").unwrap(), expected.as_bytes());
    assert_eq!(names_in(&mount.path), ["todo.txt"]);
    assert_eq!(bucket.keys(), ["todo.txt"]);
    mount.unmount();
}

#[test]
fn emacs_precious_save_renames_a_temporary_file_over_the_original() {
    let bucket = TestBucket::new("emacs");
    bucket.put("site/style.css", "body { color: red; }\n");
    let mount = Mount::new(&bucket, &[]);
    let file = mount.join("site/style.css");
    let path = file.to_str().unwrap();
    // The advice prints each rename, to show the save really went through one.
    let script = format!(
        r#"(progn
             (setq file-precious-flag t make-backup-files nil)
             (advice-add 'rename-file :before
               (lambda (from to &rest _) (message "rename-file %s -> %s" from to)))
             (find-file "{path}")
             (goto-char (point-min))
             (search-forward "red")
             (replace-match "blue")
             (goto-char (point-max))
             (insert "h1 {{ margin: 0; }}\n")
             (save-buffer))"#
    );
    let mut emacs = Command::new("emacs");
    emacs
        .args(["--batch", "-Q", "--eval", &script])
        .current_dir("/");
    let out = run_bounded(emacs, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "emacs failed: {stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("rename-file ") && l.ends_with(&format!(" -> {path}"))),
        "emacs did not save through a rename: {stderr}"
    );

    let expected = "body { color: blue; }\nh1 { margin: 0; }\n";
    assert_eq!(bucket.get("site/style.css").unwrap(), expected.as_bytes());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);
    // The temporary file had no extension; the renamed object is typed by its new name.
    assert_eq!(
        bucket.content_type("site/style.css").as_deref(),
        Some("text/css")
    );
    assert_eq!(names_in(&mount.join("site")), ["style.css"]);
    assert_eq!(bucket.keys(), ["site/style.css"]);
    mount.unmount();

    // Emacs made the temporary file 0600 and gave the original's mode back after
    // the rename; that must be what is stored.
    let mount = Mount::new(&bucket, &[]);
    let md = std::fs::metadata(mount.join("site/style.css")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o644);
    mount.unmount();
}
