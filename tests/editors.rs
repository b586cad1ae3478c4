//! Editors saving files on the mount, each in its own way: vim (swap file, write
//! backup), nano (truncate and rewrite), emacs with file-precious-flag (write a
//! temporary file, rename it over the original). The object must end with exactly
//! the new text and nothing the editor made on the side may stay in the bucket.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tmux::Tmux;
use common::{Mount, TestBucket, run_bounded, wait_until};

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
    let vim = Tmux::vim(&file);
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
