//! Extended attributes and POSIX ACLs through a real mount: the calls behave as
//! on ext4, the values are stored as s3fs stores them, and rsync, cp and
//! setfacl keep them across a remount.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{Mount, TestBucket, sh, sh_output};

fn c(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).expect("no NUL")
}

/// setxattr(2); the errno on failure.
fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let (p, n) = (c(path.as_os_str().as_bytes()), c(name));
    // SAFETY: valid C strings and a buffer of the length given.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// getxattr(2) into a buffer of `size` bytes (0: the size probe); the length
/// and the bytes, or the errno.
fn getxattr(path: &Path, name: &str, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let (p, n) = (c(path.as_os_str().as_bytes()), c(name));
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings and a buffer of the length given.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if rc < 0 {
        return Err(errno());
    }
    let len = rc as usize;
    buf.truncate(len.min(size));
    Ok((len, buf))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn attributes_behave_as_on_ext4_and_are_stored_as_s3fs_stores_them() {
    let bucket = TestBucket::new("xattr");
    bucket.put("f", "data");
    let mount = Mount::new(&bucket, &[]);
    let f = mount.join("f");
    assert_eq!(
        setxattr(&f, "user.color", b"red", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    setxattr(&f, "user.color", b"red", libc::XATTR_CREATE).unwrap();
    assert_eq!(
        setxattr(&f, "user.color", b"blue", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    setxattr(&f, "user.color", b"blue", libc::XATTR_REPLACE).unwrap();
    // The size probe, a buffer too small, and one that fits.
    assert_eq!(getxattr(&f, "user.color", 0).unwrap().0, 4);
    assert_eq!(getxattr(&f, "user.color", 2), Err(libc::ERANGE));
    assert_eq!(getxattr(&f, "user.color", 64).unwrap().1, b"blue");
    assert_eq!(getxattr(&f, "user.none", 64), Err(libc::ENODATA));
    assert_eq!(setxattr(&f, "trusted.x", b"1", 0), Err(libc::EOPNOTSUPP));
    // What S3 cannot hold fails with E2BIG and changes nothing.
    let before = bucket.head("f");
    assert_eq!(setxattr(&f, "user.big", &[b'x'; 3000], 0), Err(libc::E2BIG));
    assert_eq!(bucket.head("f").e_tag(), before.e_tag());
    // Exactly s3fs's header: {"user.color":"Ymx1ZQ=="}, percent-encoded.
    let head = bucket.head("f");
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("xattr"))
            .map(String::as_str),
        Some("%7B%22user.color%22%3A%22Ymx1ZQ%3D%3D%22%7D")
    );
    assert_eq!(bucket.get("f").unwrap(), b"data", "a copy onto itself");
    // Directories have them too; removal and listing.
    sh(&format!(
        "mkdir {0}/d && setfattr -n user.dir -v x {0}/d",
        mount.path.display()
    ));
    let m = mount.path.display();
    assert_eq!(
        sh(&format!("getfattr --absolute-names -d {m}/d | grep user")).trim(),
        "user.dir=\"x\""
    );
    sh(&format!("setfattr -x user.color {m}/f"));
    assert!(
        !sh_output(&format!("setfattr -x user.color {m}/f"))
            .status
            .success()
    );
    assert!(
        bucket
            .head("f")
            .metadata()
            .is_none_or(|m| !m.contains_key("xattr"))
    );
    mount.unmount();
    let again = Mount::new(&bucket, &[]);
    let m = again.path.display();
    assert_eq!(
        sh(&format!(
            "getfattr --absolute-names --only-values -n user.dir {m}/d"
        )),
        "x"
    );
    assert_eq!(sh(&format!("getfattr --absolute-names -d {m}/f")), "");
    again.unmount();
}

#[test]
fn attributes_s3fs_wrote_are_read_through_the_mount() {
    let bucket = TestBucket::new("xattr-s3fs");
    // As s3fs writes user.mime=text/plain and an empty user.flag.
    bucket.put_with(
        "doc.txt",
        "hello",
        Some("text/plain"),
        &[
            ("mode", "33188"),
            (
                "xattr",
                "%7B%22user.flag%22%3A%22%22%2C%22user.mime%22%3A%22dGV4dC9wbGFpbg%3D%3D%22%7D",
            ),
        ],
    );
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    assert_eq!(
        sh(&format!(
            "getfattr --absolute-names --only-values -n user.mime {m}/doc.txt"
        )),
        "text/plain"
    );
    assert_eq!(
        sh(&format!(
            "getfattr --absolute-names -m - {m}/doc.txt | grep user | sort"
        )),
        "user.flag\nuser.mime\n"
    );
    mount.unmount();
}

#[test]
fn acls_are_enforced_set_the_mode_and_are_inherited() {
    let bucket = TestBucket::new("acl");
    let mount = Mount::new(&bucket, &["--allow-other"]);
    let parent = mount.path.parent().expect("the mount's directory");
    sh(&format!("chmod 755 {}", parent.display()));
    let m = mount.path.display();
    sh(&format!("echo secret > {m}/f && chmod 600 {m}/f"));
    let as_nobody = |cmd: &str| sh_output(&format!("su nobody -s /bin/sh -c '{cmd}'"));
    assert!(
        !as_nobody(&format!("cat {m}/f")).status.success(),
        "0600 keeps others out"
    );
    sh(&format!("setfacl -m u:nobody:r {m}/f"));
    let read = as_nobody(&format!("cat {m}/f"));
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "secret\n",
        "{read:?}"
    );
    // The group bits show the ACL's mask.
    assert_eq!(sh(&format!("stat -c %A {m}/f")).trim(), "-rw-r-----");
    // A default ACL is inherited by what is created below, in place of the umask.
    sh(&format!(
        "mkdir {m}/shared && setfacl -d -m u:nobody:rwx {m}/shared"
    ));
    sh(&format!(
        "umask 077 && echo x > {m}/shared/new && mkdir {m}/shared/sub"
    ));
    let acl = sh(&format!("getfacl --omit-header {m}/shared/new"));
    assert!(acl.contains("user:nobody:rwx"), "{acl}");
    let sub = sh(&format!("getfacl --omit-header {m}/shared/sub"));
    assert!(sub.contains("default:user:nobody:rwx"), "{sub}");
    mount.unmount();
    // After a remount, the ACL is still there and still enforced.
    let again = Mount::new(&bucket, &["--allow-other"]);
    let m = again.path.display();
    let read = as_nobody(&format!("cat {m}/f"));
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "secret\n",
        "{read:?}"
    );
    again.unmount();
}

#[test]
fn rsync_and_cp_keep_attributes_and_acls_and_a_second_rsync_sends_nothing() {
    let bucket = TestBucket::new("rsync-x");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    let s = src.display();
    sh(&format!(
        "mkdir -p {s}/sub && echo a > {s}/a && echo b > {s}/sub/b && \
         setfattr -n user.k -v v1 {s}/a && setfattr -n user.dir -v d {s}/sub && \
         setfacl -m u:nobody:rw {s}/sub/b && setfacl -d -m g:nogroup:rx {s}/sub"
    ));
    let mount = Mount::new(&bucket, &[]);
    let m = mount.path.display();
    sh(&format!("rsync -aAX {s}/ {m}/tree/"));
    assert_eq!(
        sh(&format!("rsync -aAX --itemize-changes {s}/ {m}/tree/")),
        ""
    );
    sh(&format!("cp --preserve=xattr {s}/a {m}/copied"));
    mount.unmount();
    let again = Mount::new(&bucket, &[]);
    let m = again.path.display();
    assert_eq!(
        sh(&format!("rsync -aAX --itemize-changes {s}/ {m}/tree/")),
        "",
        "nothing to send after a remount"
    );
    assert_eq!(
        sh(&format!(
            "getfattr --absolute-names --only-values -n user.k {m}/copied"
        )),
        "v1"
    );
    let acl = sh(&format!("getfacl --omit-header {m}/tree/sub"));
    assert!(acl.contains("default:group:nogroup:r-x"), "{acl}");
    again.unmount();
}
