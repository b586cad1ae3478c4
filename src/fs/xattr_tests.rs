//! Extended attributes and ACLs through the core, on the in-memory store.

use super::acl::{self, Acl};
use super::inode::{Kind, ROOT_INO};
use super::tests::{ME, list_dir, meta_of, name, remount, setup, test_config, write_file};
use super::*;
use crate::store::memory::Op;

const CREATE: i32 = 1;
const REPLACE: i32 = 2;

/// An ACL in the kernel's form: owner, a named user, group, mask, other.
fn acl_with_user(uid: u32, user: u16, mask: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, user, uid),
        (0x04, 5, u32::MAX),
        (0x10, mask, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[tokio::test]
async fn attributes_are_set_read_listed_and_removed_as_on_ext4() {
    let s = setup();
    s.store.insert("f", "data");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    let set = |n: &'static str, v: &'static [u8], flags| s.fs.setxattr(f.ino, name(n), v, flags);
    assert_eq!(set("user.a", b"1", REPLACE).await, Err(Errno::ENODATA));
    set("user.a", b"1", CREATE).await.unwrap();
    assert_eq!(set("user.a", b"2", CREATE).await, Err(Errno::EEXIST));
    set("user.a", b"2", REPLACE).await.unwrap();
    set("user.b", b"", 0).await.unwrap();
    assert_eq!(s.fs.getxattr(f.ino, name("user.a")).await.unwrap(), b"2");
    assert_eq!(s.fs.getxattr(f.ino, name("user.b")).await.unwrap(), b"");
    assert_eq!(
        s.fs.listxattr(f.ino).await.unwrap(),
        b"user.a\0user.b\0".to_vec()
    );
    assert_eq!(set("security.x", b"1", 0).await, Err(Errno::EOPNOTSUPP));
    assert_eq!(
        s.fs.getxattr(f.ino, name("security.capability")).await,
        Err(Errno::ENODATA)
    );
    s.fs.removexattr(f.ino, name("user.a")).await.unwrap();
    assert_eq!(
        s.fs.removexattr(f.ino, name("user.a")).await,
        Err(Errno::ENODATA)
    );
    // Each change was a copy of the unchanged object onto itself.
    assert_eq!(s.store.calls(Op::Copy), 4);
    let object = s.store.object("f").unwrap();
    assert_eq!(&object.body[..], b"data");
    assert_eq!(xattr::decode(&object.metadata["xattr"])["user.b"], b"");
    s.fs.removexattr(f.ino, name("user.b")).await.unwrap();
    assert!(!s.store.object("f").unwrap().metadata.contains_key("xattr"));
    let again = remount(&s);
    let f = again.lookup(ROOT_INO, name("f")).await.unwrap();
    assert!(again.listxattr(f.ino).await.unwrap().is_empty());
}

#[tokio::test]
async fn attributes_s3fs_wrote_are_read_and_ours_survive_a_remount() {
    let s = setup();
    let metadata = [(
        "xattr".to_string(),
        "%7B%22user.from-s3fs%22%3A%22aGk%3D%22%7D".to_string(),
    )]
    .into_iter()
    .collect();
    s.store.insert_with("f", "x", metadata);
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    assert_eq!(
        s.fs.getxattr(f.ino, name("user.from-s3fs")).await.unwrap(),
        b"hi"
    );
    let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
    s.fs.setxattr(d.ino, name("user.dir"), b"v", 0)
        .await
        .unwrap();
    let again = remount(&s);
    let d = again.lookup(ROOT_INO, name("d")).await.unwrap();
    assert_eq!(again.getxattr(d.ino, name("user.dir")).await.unwrap(), b"v");
    assert_eq!(
        s.store.object("d/").unwrap().content_type.as_deref(),
        Some("application/x-directory")
    );
}

#[tokio::test]
async fn a_listed_object_has_no_acl_until_its_headers_are_read() {
    let s = setup();
    let acl = acl_with_user(1234, 6, 6);
    let stored = xattr::encode(&[(acl::ACCESS.to_string(), acl.clone())].into());
    s.store
        .insert_with("d/f", "x", [("xattr".to_string(), stored)].into());
    let d = s.fs.lookup(ROOT_INO, name("d")).await.unwrap();
    let listed = list_dir(&s.fs, d.ino, true).await;
    let f = listed.iter().find(|e| e.name == "f").unwrap();
    // `ls -l` asks every entry for its ACL: like the mode, a listed entry shows
    // the mount's defaults (none), without a HEAD each.
    let heads = s.store.calls(Op::Head);
    assert_eq!(
        s.fs.getxattr(f.ino, name(acl::ACCESS)).await,
        Err(Errno::ENODATA)
    );
    assert_eq!(s.store.calls(Op::Head), heads);
    // Any other attribute asked for reads the headers, and then the ACL is there.
    assert_eq!(
        s.fs.getxattr(f.ino, name("user.none")).await,
        Err(Errno::ENODATA)
    );
    assert_eq!(s.store.calls(Op::Head), heads + 1);
    assert_eq!(s.fs.getxattr(f.ino, name(acl::ACCESS)).await.unwrap(), acl);
    // Looked up by name, an object's headers are read: its ACL shows at once.
    s.store.insert_with(
        "g",
        "x",
        [(
            "xattr".to_string(),
            xattr::encode(&[(acl::ACCESS.to_string(), acl.clone())].into()),
        )]
        .into(),
    );
    let g = s.fs.lookup(ROOT_INO, name("g")).await.unwrap();
    assert_eq!(s.fs.getxattr(g.ino, name(acl::ACCESS)).await.unwrap(), acl);
}

#[tokio::test]
async fn an_attribute_s3_cannot_hold_fails_with_e2big_and_changes_nothing() {
    let s = setup();
    s.store.insert("f", "data");
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    s.fs.setxattr(f.ino, name("user.small"), b"ok", 0)
        .await
        .unwrap();
    let before = s.store.object("f").unwrap();
    let big = vec![b'x'; 1500];
    assert_eq!(
        s.fs.setxattr(f.ino, name("user.big"), &big, 0).await,
        Err(Errno::E2BIG)
    );
    let after = s.store.object("f").unwrap();
    assert_eq!((after.etag, after.metadata), (before.etag, before.metadata));
    assert_eq!(
        s.fs.getxattr(f.ino, name("user.big")).await,
        Err(Errno::ENODATA)
    );
}

#[tokio::test]
async fn an_attribute_of_a_file_being_written_goes_up_with_it() {
    let s = setup();
    let fh =
        s.fs.create(ROOT_INO, name("new"), 0o644, libc::O_WRONLY, ME)
            .await
            .unwrap()
            .1;
    let ino = s.fs.lookup(ROOT_INO, name("new")).await.unwrap().ino;
    s.fs.setxattr(ino, name("user.k"), b"v", 0).await.unwrap();
    assert!(s.store.object("new").is_none(), "nothing before close");
    s.fs.write(fh, 0, b"body".to_vec()).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    let object = s.store.object("new").unwrap();
    assert_eq!(xattr::decode(&object.metadata["xattr"])["user.k"], b"v");
    assert_eq!(&object.body[..], b"body");
}

#[tokio::test]
async fn an_access_acl_sets_the_mode_and_chmod_sets_the_acl() {
    let s = setup();
    write_file(&s.fs, ROOT_INO, "f", b"x").await.unwrap();
    let f = s.fs.lookup(ROOT_INO, name("f")).await.unwrap();
    let value = acl_with_user(1234, 6, 6);
    s.fs.setxattr(f.ino, name(acl::ACCESS), &value, 0)
        .await
        .unwrap();
    assert_eq!(s.fs.getattr(f.ino).await.unwrap().perm, 0o764);
    assert_eq!(meta_of(&s, "f").mode, Some(libc::S_IFREG | 0o764));
    let changes = SetAttr {
        mode: Some(0o640),
        ..SetAttr::default()
    };
    s.fs.setattr(f.ino, changes).await.unwrap();
    let stored = s.fs.getxattr(f.ino, name(acl::ACCESS)).await.unwrap();
    assert_eq!(Acl::parse(&stored).unwrap().mode_bits(), 0o640);
    // An ACL that says no more than the mode is not kept.
    let mut minimal = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 6u16), (0x04, 0), (0x20, 0)] {
        minimal.extend_from_slice(&tag.to_le_bytes());
        minimal.extend_from_slice(&perm.to_le_bytes());
        minimal.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    s.fs.setxattr(f.ino, name(acl::ACCESS), &minimal, 0)
        .await
        .unwrap();
    assert_eq!(s.fs.getattr(f.ino).await.unwrap().perm, 0o600);
    assert_eq!(
        s.fs.getxattr(f.ino, name(acl::ACCESS)).await,
        Err(Errno::ENODATA)
    );
    assert_eq!(
        s.fs.setxattr(f.ino, name(acl::ACCESS), b"junk", 0).await,
        Err(Errno::EINVAL)
    );
    // Removing an ACL there is none of succeeds (as on ext4) and writes nothing.
    let copies = s.store.calls(Op::Copy);
    s.fs.removexattr(f.ino, name(acl::ACCESS)).await.unwrap();
    assert_eq!(s.store.calls(Op::Copy), copies);
}

#[tokio::test]
async fn a_default_acl_is_inherited_and_replaces_the_umask() {
    let s = setup();
    let d = s.fs.mkdir(ROOT_INO, name("d"), 0o755, ME).await.unwrap();
    let default = acl_with_user(1234, 7, 7);
    s.fs.setxattr(d.ino, name(acl::DEFAULT), &default, 0)
        .await
        .unwrap();
    let masked = Caller { umask: 0o077, ..ME };
    let (f, fh) =
        s.fs.create(d.ino, name("f"), 0o666, libc::O_WRONLY, masked)
            .await
            .unwrap();
    s.fs.release(fh).await;
    // Not 0600: the umask gives way to the default ACL, whose mask takes the
    // group bits of the mode asked for.
    assert_eq!(f.perm, 0o664);
    let access = s.fs.getxattr(f.ino, name(acl::ACCESS)).await.unwrap();
    assert!(!Acl::parse(&access).unwrap().is_minimal());
    let sub = s.fs.mkdir(d.ino, name("sub"), 0o777, masked).await.unwrap();
    assert_eq!(sub.kind, Kind::Dir);
    assert_eq!(
        s.fs.getxattr(sub.ino, name(acl::DEFAULT)).await.unwrap(),
        default
    );
    // Where no default ACL is, the umask applies.
    let (plain, fh) =
        s.fs.create(ROOT_INO, name("plain"), 0o666, libc::O_WRONLY, masked)
            .await
            .unwrap();
    s.fs.release(fh).await;
    assert_eq!(plain.perm, 0o600);
}

#[tokio::test]
async fn an_edit_of_a_file_known_from_a_listing_keeps_its_attributes() {
    let s = setup();
    let metadata = [
        ("mode".to_string(), "33200".to_string()),
        (
            "xattr".to_string(),
            xattr::encode(&[("user.k".to_string(), b"v".to_vec())].into()),
        ),
    ]
    .into_iter()
    .collect();
    s.store.insert_with("f", "old", metadata);
    // Known from a listing only: its headers were never read.
    let dh = s.fs.opendir(ROOT_INO).unwrap();
    let listed = s.fs.readdir(ROOT_INO, dh, 0, 100, true).await.unwrap();
    s.fs.releasedir(dh);
    let f = listed.iter().find(|e| e.name == "f").unwrap().ino;
    let fh =
        s.fs.open(f, libc::O_WRONLY | libc::O_TRUNC, ME)
            .await
            .unwrap();
    s.fs.write(fh, 0, b"new".to_vec()).await.unwrap();
    s.fs.flush(fh, ME.process).await.unwrap();
    s.fs.release(fh).await;
    let object = s.store.object("f").unwrap();
    assert_eq!(&object.body[..], b"new");
    assert_eq!(object.metadata["mode"], "33200");
    assert_eq!(xattr::decode(&object.metadata["xattr"])["user.k"], b"v");
    // A truncate(2) with no handle open keeps them too.
    let config = test_config(&s.dir.path().join("again"));
    let again = Fs::new(s.store.clone(), config, None).unwrap();
    let dh = again.opendir(ROOT_INO).unwrap();
    let listed = again.readdir(ROOT_INO, dh, 0, 100, true).await.unwrap();
    let f = listed.iter().find(|e| e.name == "f").unwrap().ino;
    let shorter = SetAttr {
        size: Some(1),
        ..SetAttr::default()
    };
    again.setattr(f, shorter).await.unwrap();
    let object = s.store.object("f").unwrap();
    assert_eq!(&object.body[..], b"n");
    assert_eq!(object.metadata["mode"], "33200");
}

#[tokio::test]
async fn an_old_directory_object_is_a_directory_and_one_with_data_is_not() {
    let s = setup();
    let dir_type = [("mode".to_string(), (libc::S_IFDIR | 0o750).to_string())];
    s.store
        .insert_with("olddir", "", dir_type.clone().into_iter().collect());
    s.store
        .insert_with("notdir", "data", dir_type.into_iter().collect());
    let old = s.fs.lookup(ROOT_INO, name("olddir")).await.unwrap();
    assert_eq!((old.kind, old.perm), (Kind::Dir, 0o750));
    assert_eq!(
        s.fs.lookup(ROOT_INO, name("notdir")).await.unwrap().kind,
        Kind::File
    );
    // Its first change rewrites it as a marker.
    let changes = SetAttr {
        mode: Some(0o700),
        ..SetAttr::default()
    };
    s.fs.setattr(old.ino, changes).await.unwrap();
    assert!(s.store.object("olddir").is_none());
    assert_eq!(meta_of(&s, "olddir/").mode, Some(libc::S_IFDIR | 0o700));
}
