use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn record(staging: &str, key: &str, progress: Progress) -> Record {
    Record {
        format: FORMAT,
        bucket: "b".into(),
        key: key.into(),
        staging: staging.into(),
        progress,
        based_on: None,
        base_len: 0,
        local: vec![(0, 5)],
        size: 5,
        offloaded: Vec::new(),
        content_type: Some("text/plain".into()),
        metadata: BTreeMap::from([("mode".to_string(), "33188".to_string())]),
        upload: None,
    }
}

fn setup() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path()).unwrap();
    (dir, journal)
}

fn stage(journal: &Journal, name: &str, data: &[u8]) {
    fs::write(journal.staging_dir().join(name), data).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn records_are_replaced_whole_and_removed() {
    let (_dir, journal) = setup();
    let mut r = record("1-a", "a", Progress::Writing);
    journal.write(&r, false).unwrap();
    r.progress = Progress::Complete;
    journal.write(&r, true).unwrap();
    assert_eq!(names(journal.dir()), ["1-a.json"]);
    let read: Record =
        serde_json::from_slice(&fs::read(journal.dir().join("1-a.json")).unwrap()).unwrap();
    assert_eq!(read, r);
    let mode = fs::metadata(journal.dir().join("1-a.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    journal.remove("1-a");
    assert!(names(journal.dir()).is_empty());
}

#[test]
fn recovery_resumes_complete_files_and_puts_unfinished_ones_aside() {
    let (dir, journal) = setup();
    stage(&journal, "1-done", b"whole");
    journal
        .write(
            &record("1-done", "docs/done.txt", Progress::Complete),
            false,
        )
        .unwrap();
    stage(&journal, "2-half", b"half");
    let mut half = record("2-half", "backup/x.tar", Progress::Writing);
    half.upload = Some(UploadRecord {
        key: "backup/x.tar".into(),
        id: "up-1".into(),
        crc32c: true,
        content_type: None,
        metadata: BTreeMap::new(),
        parts: vec![],
    });
    journal.write(&half, false).unwrap();
    // A record never renamed into place.
    fs::write(journal.dir().join("3-x.tmp"), b"{").unwrap();

    let recovery = recover(&journal, "b", "").unwrap();
    assert_eq!(recovery.complete.len(), 1);
    assert_eq!(recovery.complete[0].key, "docs/done.txt");
    assert_eq!(
        recovery.abandoned_uploads,
        [("backup/x.tar".to_string(), "up-1".to_string())]
    );
    let recovered = names(&dir.path().join("recovered"));
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    let data = recovered.iter().find(|n| !n.ends_with(".json")).unwrap();
    assert!(data.starts_with("backup%2Fx.tar."), "{data}");
    assert_eq!(
        fs::read(dir.path().join("recovered").join(data)).unwrap(),
        b"half"
    );
    assert_eq!(names(journal.dir()), ["1-done.json"]);
    assert_eq!(names(journal.staging_dir()), ["1-done"]);
}

#[test]
fn an_unfinished_file_with_offloaded_bytes_keeps_the_upload_that_holds_them() {
    let (dir, journal) = setup();
    stage(&journal, "4-big", b"head");
    let mut big = record("4-big", "backup/big.bin", Progress::Writing);
    big.size = 24 << 20;
    big.offloaded = vec![(8 << 20, 16 << 20)];
    big.upload = Some(UploadRecord {
        key: "backup/big.bin".into(),
        id: "up-2".into(),
        crc32c: true,
        content_type: None,
        metadata: BTreeMap::new(),
        parts: vec![],
    });
    journal.write(&big, false).unwrap();
    let recovery = recover(&journal, "b", "").unwrap();
    assert!(recovery.abandoned_uploads.is_empty());
    // The data and the record that names the upload are put aside together.
    let recovered = names(&dir.path().join("recovered"));
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    let record = recovered.iter().find(|n| n.ends_with(".json")).unwrap();
    let text = fs::read_to_string(dir.path().join("recovered").join(record)).unwrap();
    assert!(
        text.contains("up-2") && text.contains("offloaded"),
        "{text}"
    );
}

#[test]
fn a_record_that_cannot_be_read_is_quarantined_with_its_data() {
    let (dir, journal) = setup();
    stage(&journal, "7-torn", b"precious");
    fs::write(journal.dir().join("7-torn.json"), b"{\"format\":1,\"buck").unwrap();
    stage(&journal, "8-ok", b"fine");
    journal
        .write(&record("8-ok", "ok", Progress::Complete), false)
        .unwrap();
    let recovery = recover(&journal, "b", "").unwrap();
    assert_eq!(recovery.complete.len(), 1, "the other records still resume");
    assert_eq!(
        names(&dir.path().join("quarantine")),
        ["7-torn", "7-torn.json"]
    );
    assert_eq!(
        fs::read(dir.path().join("quarantine/7-torn")).unwrap(),
        b"precious"
    );
}

#[test]
fn records_of_other_mounts_and_newer_formats_are_left_alone() {
    let (_dir, journal) = setup();
    stage(&journal, "1-other", b"x");
    let mut other = record("1-other", "k", Progress::Writing);
    other.bucket = "another-bucket".into();
    journal.write(&other, false).unwrap();
    stage(&journal, "2-newer", b"y");
    let mut newer = record("2-newer", "k2", Progress::Writing);
    newer.format = FORMAT + 1;
    journal.write(&newer, false).unwrap();
    stage(&journal, "3-outside", b"z");
    journal
        .write(
            &record("3-outside", "elsewhere/k", Progress::Writing),
            false,
        )
        .unwrap();
    let recovery = recover(&journal, "b", "site/").unwrap();
    assert!(recovery.complete.is_empty());
    assert_eq!(
        names(journal.staging_dir()),
        ["1-other", "2-newer", "3-outside"]
    );
    assert_eq!(names(journal.dir()).len(), 3);
}

#[test]
fn staging_files_without_a_record_are_put_aside_not_uploaded() {
    let (dir, journal) = setup();
    stage(
        &journal,
        "99-old-version-file.txt",
        b"kept by an older s3mount",
    );
    let recovery = recover(&journal, "b", "").unwrap();
    assert!(recovery.complete.is_empty());
    assert_eq!(
        names(&dir.path().join("recovered")),
        ["99-old-version-file.txt"]
    );
}

#[test]
fn long_keys_keep_their_end_in_the_file_name() {
    let key = format!("{}/photo.jpg", "d".repeat(600));
    let name = file_name_of_key(&key);
    assert!(name.len() <= 203, "{}", name.len());
    assert!(name.ends_with("%2Fphoto.jpg"));
    assert_eq!(file_name_of_key("a/b%c"), "a%2Fb%25c");
}

#[test]
fn data_put_aside_never_replaces_what_is_there() {
    let (dir, journal) = setup();
    let aside = dir.path().join("aside");
    fs::create_dir(&aside).unwrap();
    // Earlier data under the name, and an earlier record under the next one.
    fs::write(aside.join("x"), b"older data").unwrap();
    fs::write(aside.join("x.1.json"), b"older record").unwrap();
    stage(&journal, "s", b"new data");
    let record = journal.dir().join("s.json");
    fs::write(&record, b"new record").unwrap();

    let to = move_aside(
        &aside,
        "x",
        Some(&journal.staging_dir().join("s")),
        Some(&record),
    )
    .unwrap();
    assert_eq!(to, aside.join("x.2"));
    assert_eq!(fs::read(aside.join("x")).unwrap(), b"older data");
    assert_eq!(fs::read(aside.join("x.1.json")).unwrap(), b"older record");
    assert_eq!(fs::read(aside.join("x.2")).unwrap(), b"new data");
    assert_eq!(fs::read(aside.join("x.2.json")).unwrap(), b"new record");
    assert!(names(journal.staging_dir()).is_empty());
    assert!(!record.exists());
}
