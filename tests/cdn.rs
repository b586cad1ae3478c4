//! CloudFront invalidation: files changed through the mount are invalidated in a
//! distribution of a local CloudFront API (moto), in batches, and the paths it
//! recorded are checked. A batch goes after 2 s without a change; the unmount
//! sends what is left, so after it nothing more can come.

mod common;

use std::time::{Duration, Instant};

use common::cdn::{Distribution, Proxy};
use common::tmux::Tmux;
use common::{Mount, TestBucket, assert_fails_with, mount_failing, sh, wait_until};

/// How long a batch may take to reach the CDN after the last change.
const ARRIVAL: Duration = Duration::from_secs(30);

fn mount_with(bucket: &TestBucket, cdn: &Distribution, extra: &[&str]) -> Mount {
    let mut args = cdn.mount_args(&cdn.endpoint);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Mount::new(bucket, &args)
}

/// After the unmount's flush, the invalidations are still exactly `expected`.
fn unmount_and_expect(mount: Mount, cdn: &Distribution, expected: &[Vec<String>]) {
    assert!(mount.unmount().success());
    assert_eq!(cdn.invalidations(), expected);
}

fn paths(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| p.to_string()).collect()
}

#[test]
fn cp_of_three_files_gives_one_invalidation_of_exactly_those_paths() {
    let bucket = TestBucket::new("cdn-cp");
    bucket.put("style.css", "old");
    let cdn = Distribution::new(&bucket.name);
    let mount = mount_with(&bucket, &cdn, &[]);
    let src = tempfile::tempdir().unwrap();
    for name in ["style.css", "app.js", "logo.svg"] {
        std::fs::write(src.path().join(name), name).unwrap();
    }
    sh(&format!(
        "cd '{}' && cp style.css app.js logo.svg '{}/'",
        src.path().display(),
        mount.path.display()
    ));
    let made = cdn.wait_for(1, ARRIVAL);
    let expected = vec![paths(&["/app.js", "/logo.svg", "/style.css"])];
    assert_eq!(made, expected);
    unmount_and_expect(mount, &cdn, &expected);
}

#[test]
fn five_hundred_files_in_one_directory_give_one_wildcard() {
    let bucket = TestBucket::new("cdn-img");
    let cdn = Distribution::new(&bucket.name);
    // A longer delay than the default, so that a slow machine cannot split the
    // writes into two batches.
    let mount = mount_with(&bucket, &cdn, &["--cloudfront-delay", "5s"]);
    let img = mount.join("img");
    std::fs::create_dir(&img).unwrap();
    for i in 0..500 {
        std::fs::write(img.join(format!("photo-{i}.jpg")), format!("{i}")).unwrap();
    }
    let expected = vec![paths(&["/img/*"])];
    assert_eq!(cdn.wait_for(1, ARRIVAL), expected);
    assert_eq!(
        bucket.keys().len(),
        501,
        "the files and the directory marker"
    );
    unmount_and_expect(mount, &cdn, &expected);
}

#[test]
fn editing_with_vim_invalidates_the_file_only() {
    let bucket = TestBucket::new("cdn-vim");
    bucket.put("style.css", "body { color: red; }\n");
    let cdn = Distribution::new(&bucket.name);
    let mount = mount_with(&bucket, &cdn, &[]);
    let file = mount.join("style.css");
    let swap = mount.join(".style.css.swp");
    let vim = Tmux::vim(&file);
    vim.wait_for_text("color: red");
    wait_until(Duration::from_secs(20), "vim's swap file", || swap.exists());
    vim.type_text(":s/red/blue/");
    vim.press(&["Enter"]);
    vim.wait_for_text("color: blue");
    vim.type_text(":wq");
    vim.press(&["Enter"]);
    vim.wait_exit();
    assert_eq!(
        bucket.get("style.css").unwrap(),
        b"body { color: blue; }\n".to_vec()
    );
    let expected = vec![paths(&["/style.css"])];
    assert_eq!(cdn.wait_for(1, ARRIVAL), expected);
    unmount_and_expect(mount, &cdn, &expected);
}

#[test]
fn rm_and_mv_invalidate_every_name_they_touch_encoded() {
    let bucket = TestBucket::new("cdn-mv");
    bucket.put("old name.html", "a");
    bucket.put("gone.css", "b");
    bucket.put("café/menü.html", "c");
    bucket.put("docs/a.html", "d");
    let cdn = Distribution::new(&bucket.name);
    let mount = mount_with(&bucket, &cdn, &[]);
    sh(&format!(
        "cd '{}' && mv 'old name.html' 'new name.html' && rm gone.css \
         && echo new > 'café/menü.html' && mv docs manuals",
        mount.path.display()
    ));
    let expected = vec![paths(&[
        "/caf%C3%A9/men%C3%BC.html",
        "/docs/a.html",
        "/gone.css",
        "/manuals/a.html",
        "/new%20name.html",
        "/old%20name.html",
    ])];
    assert_eq!(cdn.wait_for(1, ARRIVAL), expected);
    unmount_and_expect(mount, &cdn, &expected);
}

#[test]
fn path_prefix_and_index_document_map_to_the_sites_urls() {
    let bucket = TestBucket::new("cdn-index");
    let cdn = Distribution::new(&bucket.name);
    let mount = mount_with(
        &bucket,
        &cdn,
        &[
            "--cloudfront-path-prefix",
            "/site",
            "--cloudfront-index-document",
            "index.html",
        ],
    );
    std::fs::create_dir(mount.join("blog")).unwrap();
    std::fs::write(mount.join("blog/index.html"), "<h1>blog</h1>").unwrap();
    std::fs::write(mount.join("index.html"), "<h1>home</h1>").unwrap();
    let expected = vec![paths(&[
        "/site/",
        "/site/blog/",
        "/site/blog/index.html",
        "/site/index.html",
    ])];
    assert_eq!(cdn.wait_for(1, ARRIVAL), expected);
    unmount_and_expect(mount, &cdn, &expected);
}

#[test]
fn file_operations_do_not_wait_for_a_cdn_that_hangs_and_it_is_invalidated_once_back() {
    let bucket = TestBucket::new("cdn-down");
    bucket.put("a.css", "old");
    let cdn = Distribution::new(&bucket.name);
    let proxy = Proxy::new(&cdn.endpoint);
    let mut args = cdn.mount_args(&proxy.url);
    // b.css is made and renamed inside one batch even on a slow machine.
    args.extend(["--cloudfront-delay".into(), "5s".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mount = Mount::new(&bucket, &args);
    let tried_and_failed = |log: &str| {
        log.lines()
            .any(|l| l.contains("CloudFront invalidation of") && l.contains("failed"))
    };

    proxy.set_up(false);
    let started = Instant::now();
    std::fs::write(mount.join("a.css"), "new").unwrap();
    std::fs::write(mount.join("b.css"), "b").unwrap();
    std::fs::rename(mount.join("b.css"), mount.join("c.css")).unwrap();
    println!(
        "file operations took {:?} with the CDN down",
        started.elapsed()
    );
    // A try of the hanging CDN fails only after its 20 s timeout, and none began
    // before the batch's delay: file operations that waited for it could not have
    // returned before that failure.
    assert!(!tried_and_failed(&mount.log_text()));
    assert_eq!(bucket.get("a.css").unwrap(), b"new".to_vec());
    assert_eq!(bucket.get("c.css").unwrap(), b"b".to_vec());
    wait_until(
        Duration::from_secs(60),
        "a failed try to reach the CDN",
        || tried_and_failed(&mount.log_text()),
    );
    assert!(cdn.invalidations().is_empty());

    proxy.set_up(true);
    let expected = vec![paths(&["/a.css", "/c.css"])];
    assert_eq!(cdn.wait_for(1, Duration::from_secs(90)), expected);
    unmount_and_expect(mount, &cdn, &expected);
}

#[test]
fn a_wrong_distribution_id_fails_the_mount() {
    let bucket = TestBucket::new("cdn-wrong");
    let dir = tempfile::tempdir().unwrap();
    let endpoint = common::cdn::endpoint();
    let out = mount_failing(
        &bucket.env,
        &bucket.name,
        dir.path(),
        &[
            "--cloudfront-distribution-id",
            "E2NOSUCHDIST",
            "--cloudfront-endpoint-url",
            &endpoint,
        ],
    );
    assert_fails_with(&out, "CloudFront distribution E2NOSUCHDIST does not exist");
}
