//! Unit tests of a new file sent part by part while it is written: whatever
//! happens to the file meanwhile, the object is the file as it was at close.

use super::tests::{ME, pattern, setup, write_in_pieces};
use super::*;
use crate::store::memory::Op;

const MIB: usize = 1 << 20;

/// The object `key` is `expected` (without printing megabytes when it is not).
fn assert_object(s: &super::tests::Setup, key: &str, expected: &[u8]) {
    let body = s.store.object(key).unwrap().body;
    let first_difference = body.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        body[..] == expected[..],
        "{key}: {} bytes, expected {}; first difference at {first_difference:?}",
        body.len(),
        expected.len()
    );
}

async fn close(fs: &Fs, fh: u64) {
    fs.flush(fh, ME.process).await.unwrap();
    fs.release(fh).await;
}

#[tokio::test]
async fn a_part_collected_in_order_then_written_again_goes_up_as_written() {
    let s = setup();
    // Parts sent while the file is written stay on their way until the end.
    let gate = s.store.hold(Op::UploadPart);
    let mut data = pattern(40 * MIB);
    let (_, fh) = write_in_pieces(&s.fs, "big", &data).await;
    // Into a part on its way (the fourth, 24..32 MiB) and into the last one,
    // collected in memory and not sent yet (32..40 MiB).
    for offset in [25 * MIB + 7, 33 * MIB + 1] {
        s.fs.write(fh, offset as u64, b"again".to_vec())
            .await
            .unwrap();
        data[offset..offset + 5].copy_from_slice(b"again");
    }
    drop(gate);
    close(&s.fs, fh).await;
    assert_object(&s, "big", &data);
}

#[tokio::test]
async fn a_file_cut_and_written_again_goes_up_as_it_ends() {
    let s = setup();
    let gate = s.store.hold(Op::UploadPart);
    let mut data = pattern(40 * MIB);
    let (ino, fh) = write_in_pieces(&s.fs, "big", &data).await;
    let cut = SetAttr {
        size: Some(36 * MIB as u64),
        ..SetAttr::default()
    };
    s.fs.setattr(ino, cut).await.unwrap();
    data.truncate(36 * MIB);
    let tail = vec![7u8; 4 * MIB];
    s.fs.write(fh, 36 * MIB as u64, tail.clone()).await.unwrap();
    data.extend_from_slice(&tail);
    drop(gate);
    close(&s.fs, fh).await;
    assert_object(&s, "big", &data);
}

#[tokio::test]
async fn a_second_open_that_empties_the_file_is_not_undone_by_parts_sent_before() {
    let s = setup();
    let data = pattern(40 * MIB);
    let (ino, first) = write_in_pieces(&s.fs, "big", &data).await;
    let second =
        s.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC, ME)
            .await
            .unwrap();
    s.fs.write(second, 20 * MIB as u64, b"x".to_vec())
        .await
        .unwrap();
    close(&s.fs, second).await;
    close(&s.fs, first).await;
    let mut expected = vec![0u8; 20 * MIB];
    expected.push(b'x');
    assert_object(&s, "big", &expected);
}
