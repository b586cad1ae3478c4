//! A three-node Garage (replication factor 3): nodes stop and come back while
//! programs write through the mount. A node other than the mount's going away is
//! never an error; the mount's own node going away is one only once
//! `--retry-for` has passed, and what was written reaches S3 soon after it is
//! back.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Mount, Noise, PrivateCluster, TestBucket, close, wait_until};
use sha2::{Digest, Sha256};

const FILES: usize = 300;

fn small(i: usize) -> Vec<u8> {
    format!("file {i}\n").repeat(i % 50 + 1).into_bytes()
}

#[test]
fn another_node_stopping_and_coming_back_is_never_an_error_for_cp() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = PrivateCluster::start(dir.path(), "copies");
    let mount = Mount::source(&cluster.env, "copies", &[]);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (root, written) = (mount.join("many"), written.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            std::fs::create_dir(&root)?;
            for i in 0..FILES {
                let mut f = std::fs::File::create(root.join(format!("{i:03}")))?;
                f.write_all(&small(i))?;
                close(f)?;
                written.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    };
    // Node 2 goes away a third of the way, and comes back at two thirds.
    let limit = Duration::from_secs(300);
    wait_until(limit, "a third of the files", || {
        written.load(Ordering::SeqCst) >= FILES / 3
    });
    cluster.stop(2);
    wait_until(limit, "two thirds of the files", || {
        written.load(Ordering::SeqCst) >= 2 * FILES / 3 || writer.is_finished()
    });
    cluster.resume(2);
    writer.join().unwrap().expect("no error reaches the copy");

    // A large file while node 3 is away.
    let mut data = vec![0u8; 48 << 20];
    Noise::new(3).fill(&mut data);
    let mut big = std::fs::File::create(mount.join("backup.tar")).unwrap();
    big.write_all(&data[..16 << 20]).unwrap();
    cluster.stop(3);
    big.write_all(&data[16 << 20..]).unwrap();
    close(big).expect("no error reaches the close");
    cluster.resume(3);
    assert!(mount.unmount().success());

    // Read through node 1, which stayed.
    let bucket = TestBucket::existing(cluster.env.clone(), "copies");
    for i in 0..FILES {
        assert_eq!(bucket.get(&format!("many/{i:03}")), Some(small(i)), "{i}");
    }
    let got = bucket.get("backup.tar").unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
}

#[test]
fn the_mounts_node_stopping_fails_close_only_after_the_retry_time_and_the_file_follows_its_return()
{
    let dir = tempfile::tempdir().unwrap();
    let cluster = PrivateCluster::start(dir.path(), "away");
    let mount = Mount::source(&cluster.env, "away", &["--retry-for", "5s"]);
    let mut file = std::fs::File::create(mount.join("index.html")).unwrap();
    cluster.stop(1);
    file.write_all(b"<h1>saved while the node was away</h1>\n")
        .unwrap();
    let closing = Instant::now();
    let err = close(file).expect_err("S3 cannot be reached");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        closing.elapsed() >= Duration::from_secs(5),
        "close() gave up after {:?}, before --retry-for",
        closing.elapsed()
    );
    cluster.resume(1);
    // Within seconds of the node's return, not after a back-off of minutes
    // (read through a node that stayed: the one back answers 503 until it has
    // found the others again).
    let bucket = TestBucket::existing(cluster.node_env(2), "away");
    wait_until(Duration::from_secs(30), "the file in S3", || {
        bucket.get("index.html").is_some()
    });
    assert_eq!(
        bucket.get("index.html").unwrap(),
        b"<h1>saved while the node was away</h1>\n"
    );
    assert!(mount.unmount().success());
}
