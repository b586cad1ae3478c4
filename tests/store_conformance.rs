//! One conformance suite for the `ObjectStore` trait, run against the in-memory
//! store (which the unit and property tests use) and against the S3
//! implementation talking to Garage. The property test of the core is only as good
//! as the in-memory store is faithful: each check here is something the core
//! relies on, and both stores must pass it.
//!
//! Where servers differ, the suite checks only what the core relies on:
//! - `If-Match` on GET, CopyObject and UploadPartCopy is enforced by all.
//! - Conditional PutObject and CompleteMultipartUpload (`If-None-Match: *`,
//!   `If-Match`) are enforced by AWS S3 (and the memory store, unless told to
//!   ignore them), on PutObject only by moto 5.2, and ignored by Garage 2.5.0.
//!   The core sends them, and where the server may not enforce them (any
//!   endpoint but AWS) asks with a HEAD first.
//! - ETags are the MD5 of the body, and of the parts' MD5s for a multipart
//!   object, on all of them: the core recognises by them an upload of its own
//!   that an earlier run completed without noting it (elsewhere it would keep
//!   both versions, never lose one).
//! - A range past the end of an object: S3 and Garage answer 416 (an error), as
//!   the memory store does; the core never asks for one (it clamps reads to the
//!   size it knows, and a shorter object than that fails as a short read).
//! - Multipart parts other than the last must be at least 5 MiB on AWS
//!   (EntityTooSmall at completion); Garage 2.5.0 and the memory store take
//!   smaller ones. The core's parts are 8 MiB or more (the last may be shorter).

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::S3Env;
use common::faults::{FaultProxy, Rates};
use common::ops::MIB;
use futures::future::BoxFuture;
use s3mount::store::memory::MemoryStore;
use s3mount::store::retry::{RetrySettings, RetryingStore};
use s3mount::store::s3::{S3Settings, S3Store};
use s3mount::store::{
    CompletedPart, Condition, CopyOptions, Crc32c, ListRequest, NewUpload, ObjectStore, PartTag,
    PutOptions, StoreError, UserMetadata, etag,
};

type Store = Arc<dyn ObjectStore>;
type Check = fn(Store, String) -> BoxFuture<'static, Result<(), String>>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Send part `number` of `upload`, with its CRC32C where the upload has checksums.
async fn send(
    store: &Store,
    key: &str,
    upload: &NewUpload,
    number: i32,
    body: Bytes,
) -> Result<PartTag, StoreError> {
    let crc32c = upload.crc32c.then(|| Crc32c::of(&body));
    let etag = store
        .upload_part(key, &upload.id, number, body, crc32c)
        .await?;
    Ok(PartTag { etag, crc32c })
}

fn body(len: u64, seed: u8) -> Bytes {
    Bytes::from(common::ops::pattern(seed, 0, len))
}

fn options(content_type: &str, meta: &[(&str, &str)]) -> PutOptions {
    PutOptions {
        content_type: Some(content_type.to_string()),
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<UserMetadata>(),
    }
}

fn e(err: StoreError) -> String {
    format!("{err:?}")
}

async fn put_head_and_get_round_trip(store: Store, p: String) -> Result<(), String> {
    let key = format!("{p}a/b.txt");
    let data = body(1000, 1);
    let opts = options(
        "text/plain",
        &[("mode", "33188"), ("mtime", "1700000000.5")],
    );
    let before = SystemTime::now() - Duration::from_secs(60);
    let etag = store
        .put(&key, data.clone(), &opts, None)
        .await
        .map_err(e)?;
    ensure!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "ETag {etag:?} is not quoted"
    );
    ensure!(
        etag == etag::of_body(&data),
        "the ETag of a PutObject is the MD5 of its body: {etag}"
    );
    let head = store.head(&key).await.map_err(e)?;
    ensure!(head.size == 1000, "size {}", head.size);
    ensure!(
        head.etag.as_deref() == Some(etag.as_str()),
        "HEAD ETag {:?}, PUT said {etag}",
        head.etag
    );
    let modified = head.last_modified.ok_or("no Last-Modified")?;
    ensure!(
        modified > before && modified < SystemTime::now() + Duration::from_secs(60),
        "Last-Modified {modified:?} is not now"
    );
    let headers = head.headers.ok_or("a HEAD has headers")?;
    ensure!(
        headers.content_type.as_deref() == Some("text/plain"),
        "{:?}",
        headers.content_type
    );
    ensure!(
        headers.metadata == opts.metadata,
        "metadata {:?}",
        headers.metadata
    );
    let got = store.get_range(&key, 0..1000, None).await.map_err(e)?;
    ensure!(got == data, "GET returned other bytes");
    Ok(())
}

async fn ranges_and_short_reads(store: Store, p: String) -> Result<(), String> {
    let key = format!("{p}r");
    let data = body(3 * MIB + 17, 2);
    store
        .put(&key, data.clone(), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    let len = data.len() as u64;
    for range in [0..1, MIB - 1..MIB + 1, 2 * MIB..3 * MIB, len - 1..len] {
        let got = store
            .get_range(&key, range.clone(), None)
            .await
            .map_err(e)?;
        ensure!(
            got[..] == data[range.start as usize..range.end as usize],
            "range {range:?}"
        );
    }
    // Past the end: what there is.
    let got = store
        .get_range(&key, len - 10..len + 100, None)
        .await
        .map_err(e)?;
    ensure!(
        got[..] == data[(len - 10) as usize..],
        "a range over the end gives {} bytes",
        got.len()
    );
    // Starting at or past the end: an error, never bytes.
    let past = store.get_range(&key, len..len + 10, None).await;
    ensure!(
        past.is_err(),
        "a range past the end gave {:?}",
        past.map(|b| b.len())
    );
    let empty = format!("{p}empty");
    store
        .put(&empty, Bytes::new(), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    ensure!(
        store.head(&empty).await.map_err(e)?.size == 0,
        "empty object size"
    );
    let got = store.get_range(&empty, 0..0, None).await.map_err(e)?;
    ensure!(got.is_empty(), "an empty range gives bytes");
    Ok(())
}

async fn etags_follow_the_content_and_if_match_holds(
    store: Store,
    p: String,
) -> Result<(), String> {
    let key = format!("{p}e");
    let first = store
        .put(&key, body(5000, 3), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    let second = store
        .put(&key, body(5000, 4), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    ensure!(first != second, "two bodies, one ETag {first}");
    let stale = store.get_range(&key, 0..10, Some(&first)).await;
    ensure!(
        stale == Err(StoreError::PreconditionFailed),
        "GET If-Match an old ETag: {stale:?}"
    );
    let fresh = store
        .get_range(&key, 0..10, Some(&second))
        .await
        .map_err(e)?;
    ensure!(fresh[..] == body(5000, 4)[..10], "GET If-Match the ETag");
    Ok(())
}

async fn listing_pages_and_delimiters(store: Store, p: String) -> Result<(), String> {
    let names = [
        "a",
        "b/",
        "b/1",
        "b/2",
        "b/c/3",
        "c d",
        "c+e",
        "caf\u{e9}",
        "d",
        "d/x",
    ];
    for n in names {
        store
            .put(
                &format!("{p}{n}"),
                Bytes::from_static(b"x"),
                &PutOptions::default(),
                None,
            )
            .await
            .map_err(e)?;
    }
    for page_size in [1, 2, 3, 1000] {
        let (mut keys, mut prefixes, mut token) = (Vec::new(), Vec::new(), None);
        loop {
            let page = store
                .list(ListRequest {
                    prefix: &p,
                    delimiter: Some("/"),
                    continuation: token,
                    max_keys: Some(page_size),
                })
                .await
                .map_err(e)?;
            ensure!(
                page.objects.len() + page.prefixes.len() <= page_size as usize,
                "page over {page_size}"
            );
            keys.extend(page.objects.iter().map(|o| o.key[p.len()..].to_string()));
            prefixes.extend(page.prefixes.iter().map(|x| x[p.len()..].to_string()));
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        ensure!(
            keys == ["a", "c d", "c+e", "caf\u{e9}", "d"],
            "pages of {page_size}: keys {keys:?}"
        );
        ensure!(
            prefixes == ["b/", "d/"],
            "pages of {page_size}: prefixes {prefixes:?}"
        );
    }
    // Below a prefix, without a delimiter: every key, the marker first.
    let page = store
        .list(ListRequest {
            prefix: &format!("{p}b/"),
            delimiter: None,
            continuation: None,
            max_keys: None,
        })
        .await
        .map_err(e)?;
    let keys: Vec<&str> = page.objects.iter().map(|o| &o.key[p.len()..]).collect();
    ensure!(keys == ["b/", "b/1", "b/2", "b/c/3"], "{keys:?}");
    // A listing's size, ETag and Last-Modified are the HEAD's (at the second).
    let listed = page
        .objects
        .iter()
        .find(|o| o.key.ends_with("b/1"))
        .ok_or("b/1 not listed")?;
    ensure!(listed.headers.is_none(), "a listing has no headers");
    let head = store.head(&listed.key).await.map_err(e)?;
    ensure!(
        listed.size == head.size && listed.etag == head.etag,
        "listing {listed:?}, HEAD {head:?}"
    );
    let secs = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    ensure!(
        secs(listed.last_modified) == secs(head.last_modified),
        "Last-Modified differs"
    );
    let one = store
        .list(ListRequest {
            prefix: &format!("{p}b/"),
            delimiter: None,
            continuation: None,
            max_keys: Some(1),
        })
        .await
        .map_err(e)?;
    ensure!(
        one.objects.len() == 1 && one.next_token.is_some(),
        "max-keys 1: {one:?}"
    );
    let none = store
        .list(ListRequest {
            prefix: &format!("{p}zzz/"),
            delimiter: Some("/"),
            continuation: None,
            max_keys: None,
        })
        .await
        .map_err(e)?;
    ensure!(
        none.objects.is_empty() && none.prefixes.is_empty() && none.next_token.is_none(),
        "an empty prefix lists {none:?}"
    );
    Ok(())
}

async fn multipart_with_part_copies(store: Store, p: String) -> Result<(), String> {
    let source = format!("{p}source");
    let src = body(12 * MIB, 5);
    let src_etag = store
        .put(&source, src.clone(), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    let key = format!("{p}multi");
    let opts = options("application/x-tar", &[("mode", "33152")]);
    let upload = store.create_multipart(&key, &opts).await.map_err(e)?;
    ensure!(upload.crc32c, "the upload was created without checksums");
    let id = upload.id.clone();
    let local = body(6 * MIB, 6);
    let tail = body(1000, 7);
    let p1 = send(&store, &key, &upload, 1, local.clone())
        .await
        .map_err(e)?;
    let p2 = store
        .upload_part_copy(&key, &id, 2, &source, 3 * MIB..9 * MIB, Some(&src_etag))
        .await
        .map_err(e)?;
    // A part sent again replaces the first one sent.
    send(&store, &key, &upload, 3, body(1000, 9))
        .await
        .map_err(e)?;
    // A part whose bytes do not give the checksum it carries is refused.
    let damaged = store
        .upload_part(&key, &id, 4, tail.clone(), Some(Crc32c::of(b"other")))
        .await;
    ensure!(
        matches!(damaged, Err(StoreError::Damaged(_))),
        "a part with a wrong checksum: {damaged:?}"
    );
    let p3 = send(&store, &key, &upload, 3, tail.clone())
        .await
        .map_err(e)?;
    let parts: Vec<CompletedPart> = (1..)
        .zip([p1, p2, p3])
        .map(|(number, tag)| CompletedPart { number, tag })
        .collect();
    let listed = store.list_parts(&key, &id).await.map_err(e)?;
    let sizes = [6 * MIB, 6 * MIB, 1000];
    ensure!(
        listed.len() == 3
            && listed.iter().zip(&parts).zip(sizes).all(|((l, p), size)| {
                l.number == p.number
                    && l.tag.etag == p.tag.etag
                    && l.size == size
                    // A copied part's checksum is known to the server alone
                    // where it does not answer it (Garage 2.5).
                    && (l.tag.crc32c == p.tag.crc32c || p.tag.crc32c.is_none())
                    && l.tag.crc32c.is_some()
            }),
        "ListParts before completion: {listed:?}, sent {parts:?}"
    );
    let etags: Vec<&str> = parts.iter().map(|p| p.tag.etag.as_str()).collect();
    let expected = etag::of_parts(&etags);
    let etag = store
        .complete_multipart(&key, &id, parts.clone(), None)
        .await
        .map_err(e)?;
    ensure!(
        etag.ends_with("-3\""),
        "a multipart ETag ends with the part count: {etag}"
    );
    ensure!(
        expected.as_deref() == Some(etag.as_str()),
        "a multipart ETag is the MD5 of its parts' MD5s: {etag}, not {expected:?}"
    );
    let gone = store.list_parts(&key, &id).await;
    ensure!(
        gone == Err(StoreError::NotFound),
        "ListParts of a completed upload: {gone:?}"
    );
    let mut want = local.to_vec();
    want.extend_from_slice(&src[3 * MIB as usize..9 * MIB as usize]);
    want.extend_from_slice(&tail);
    let got = store
        .get_range(&key, 0..want.len() as u64, None)
        .await
        .map_err(e)?;
    ensure!(got[..] == want[..], "the completed object is not its parts");
    let head = store.head(&key).await.map_err(e)?;
    let headers = head.headers.ok_or("no headers")?;
    ensure!(
        headers.content_type.as_deref() == Some("application/x-tar")
            && headers.metadata == opts.metadata,
        "metadata of the upload: {headers:?}"
    );
    // A part copy from a source that changed since is refused.
    let id = store
        .create_multipart(&key, &PutOptions::default())
        .await
        .map_err(e)?
        .id;
    store
        .put(&source, body(12 * MIB, 8), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    let stale = store
        .upload_part_copy(&key, &id, 1, &source, 0..6 * MIB, Some(&src_etag))
        .await;
    ensure!(
        stale == Err(StoreError::PreconditionFailed),
        "UploadPartCopy If-Match an old ETag: {stale:?}"
    );
    store.abort_multipart(&key, &id).await.map_err(e)?;
    let gone = store
        .upload_part(&key, &id, 1, body(10, 1), Some(Crc32c::of(&body(10, 1))))
        .await;
    ensure!(
        gone == Err(StoreError::NotFound),
        "a part of an aborted upload: {gone:?}"
    );
    // The object is still the completed one.
    ensure!(
        store.head(&key).await.map_err(e)?.etag.as_deref() == Some(etag.as_str()),
        "an aborted upload changed the object"
    );
    Ok(())
}

async fn copy_keeps_or_replaces_metadata(store: Store, p: String) -> Result<(), String> {
    let from = format!("{p}from file.css");
    let data = body(2000, 10);
    let opts = options("text/css", &[("mode", "33188"), ("uid", "1000")]);
    let etag = store
        .put(&from, data.clone(), &opts, None)
        .await
        .map_err(e)?;
    let kept = format!("{p}dir/kept \u{e9}+%.css");
    store
        .copy(
            &from,
            &kept,
            &CopyOptions {
                replace: None,
                if_match: Some(etag.clone()),
            },
        )
        .await
        .map_err(e)?;
    let head = store.head(&kept).await.map_err(e)?;
    ensure!(
        head.headers.as_ref().map(|h| &h.metadata) == Some(&opts.metadata),
        "a copy keeps the metadata: {head:?}"
    );
    ensure!(
        store.get_range(&kept, 0..2000, None).await.map_err(e)? == data,
        "a copy keeps the bytes"
    );
    // Onto itself with new metadata: what chmod does.
    let new = options("text/css", &[("mode", "33261")]);
    let copy = CopyOptions {
        replace: Some(new.clone()),
        if_match: Some(etag.clone()),
    };
    let new_etag = store.copy(&from, &from, &copy).await.map_err(e)?;
    let head = store.head(&from).await.map_err(e)?;
    ensure!(
        head.headers.map(|h| h.metadata) == Some(new.metadata),
        "replaced metadata"
    );
    ensure!(
        head.etag.as_deref() == Some(new_etag.as_str()),
        "the copy's ETag is the object's"
    );
    ensure!(
        store.get_range(&from, 0..2000, None).await.map_err(e)? == data,
        "a copy onto itself keeps the bytes"
    );
    // If-Match an ETag the source no longer has (a copy may keep the ETag: only
    // a changed body is sure to change it).
    store
        .put(&from, body(2000, 11), &opts, None)
        .await
        .map_err(e)?;
    let stale = store
        .copy(
            &from,
            &kept,
            &CopyOptions {
                replace: None,
                if_match: Some(etag),
            },
        )
        .await;
    ensure!(
        stale == Err(StoreError::PreconditionFailed),
        "CopyObject If-Match an old ETag: {stale:?}"
    );
    let missing = store
        .copy(&format!("{p}nothing"), &kept, &CopyOptions::default())
        .await;
    ensure!(
        missing == Err(StoreError::NotFound),
        "a copy of nothing: {missing:?}"
    );
    Ok(())
}

async fn errors_are_sorted(store: Store, p: String) -> Result<(), String> {
    let missing = format!("{p}missing");
    ensure!(
        store.head(&missing).await == Err(StoreError::NotFound),
        "HEAD of nothing"
    );
    let got = store.get_range(&missing, 0..10, None).await;
    ensure!(got == Err(StoreError::NotFound), "GET of nothing: {got:?}");
    store
        .delete(&missing)
        .await
        .map_err(|err| format!("deleting nothing is no error: {err:?}"))?;
    let key = format!("{p}d");
    store
        .put(&key, body(10, 1), &PutOptions::default(), None)
        .await
        .map_err(e)?;
    store.delete(&key).await.map_err(e)?;
    ensure!(
        store.head(&key).await == Err(StoreError::NotFound),
        "deleted"
    );
    let bogus = store
        .upload_part(&key, "no-such-upload", 1, body(10, 1), None)
        .await;
    ensure!(
        bogus == Err(StoreError::NotFound),
        "a part of an unknown upload: {bogus:?}"
    );
    let upload = store
        .create_multipart(&key, &PutOptions::default())
        .await
        .map_err(e)?;
    let id = upload.id.clone();
    let sent = send(&store, &key, &upload, 1, body(10, 1))
        .await
        .map_err(e)?;
    let wrong = vec![CompletedPart {
        number: 1,
        tag: PartTag {
            etag: "\"0123456789abcdef0123456789abcdef\"".into(),
            crc32c: sent.crc32c,
        },
    }];
    let done = store.complete_multipart(&key, &id, wrong, None).await;
    let _ = store.abort_multipart(&key, &id).await;
    ensure!(done.is_err(), "completed with a part's wrong ETag");
    Ok(())
}

const CHECKS: &[(&str, Check)] = &[
    ("put, head and get round trip", |s, p| {
        Box::pin(put_head_and_get_round_trip(s, p))
    }),
    ("ranges and short reads", |s, p| {
        Box::pin(ranges_and_short_reads(s, p))
    }),
    ("ETags follow the content; If-Match holds", |s, p| {
        Box::pin(etags_follow_the_content_and_if_match_holds(s, p))
    }),
    ("listing pages and delimiters", |s, p| {
        Box::pin(listing_pages_and_delimiters(s, p))
    }),
    ("multipart with part copies", |s, p| {
        Box::pin(multipart_with_part_copies(s, p))
    }),
    ("copy keeps or replaces metadata", |s, p| {
        Box::pin(copy_keeps_or_replaces_metadata(s, p))
    }),
    ("errors are sorted", |s, p| {
        Box::pin(errors_are_sorted(s, p))
    }),
];

/// Conditional writes: where the server enforces them, a PutObject or a
/// CompleteMultipartUpload whose condition fails is refused (412) and changes
/// nothing; where it does not (Garage 2.5), it replaces the object, and the core
/// must ask with a HEAD first (`--check-before-upload`).
/// `multipart`: CompleteMultipartUpload is tried too (not on moto, whose answer
/// to it, a `CompleteMultipartUploadResponse`, the SDK takes for an error).
async fn conditional_writes(
    store: Store,
    p: String,
    enforced: bool,
    multipart: bool,
) -> Result<(), String> {
    let key = format!("{p}cond");
    let v1 = store
        .put(
            &key,
            body(100, 1),
            &PutOptions::default(),
            Some(&Condition::Absent),
        )
        .await
        .map_err(e)?;
    let over = store
        .put(
            &key,
            body(100, 2),
            &PutOptions::default(),
            Some(&Condition::Absent),
        )
        .await;
    let stale = Condition::Matches(etag::of_body(b"another version"));
    let replaced = store
        .put(&key, body(100, 3), &PutOptions::default(), Some(&stale))
        .await;
    let now = store.head(&key).await.map_err(e)?.etag;
    let completed = if multipart {
        let upload = store
            .create_multipart(&key, &PutOptions::default())
            .await
            .map_err(e)?;
        let id = upload.id.clone();
        let tag = send(&store, &key, &upload, 1, body(100, 4))
            .await
            .map_err(e)?;
        let parts = vec![CompletedPart { number: 1, tag }];
        let completed = store
            .complete_multipart(&key, &id, parts, Some(&stale))
            .await;
        let _ = store.abort_multipart(&key, &id).await;
        completed.map(|_| ())
    } else {
        Ok(())
    };
    if enforced {
        ensure!(
            over == Err(StoreError::PreconditionFailed),
            "If-None-Match: * over an object: {over:?}"
        );
        ensure!(
            replaced == Err(StoreError::PreconditionFailed),
            "If-Match of another version: {replaced:?}"
        );
        ensure!(
            now.as_deref() == Some(v1.as_str()),
            "a refused write changed the object"
        );
    } else {
        ensure!(
            over.is_ok() && replaced.is_ok(),
            "a server that ignores conditions took {over:?} / {replaced:?}"
        );
    }
    // Whether CompleteMultipartUpload checks it varies (moto 5.2 does not):
    // the core's HEAD covers it. It must not fail any other way.
    ensure!(
        matches!(completed, Ok(_) | Err(StoreError::PreconditionFailed)),
        "a conditional completion: {completed:?}"
    );
    let current = store.head(&key).await.map_err(e)?.etag.ok_or("no ETag")?;
    store
        .put(
            &key,
            body(100, 5),
            &PutOptions::default(),
            Some(&Condition::Matches(current)),
        )
        .await
        .map_err(|err| format!("If-Match of the current version: {err:?}"))?;
    Ok(())
}

/// Run every check, each under its own prefix; panic with all that failed.
/// `enforced`: the server enforces conditional writes.
async fn conforms(store: Store, enforced: bool) {
    let mut failed = Vec::new();
    for (i, (name, check)) in CHECKS.iter().enumerate() {
        if let Err(why) = check(store.clone(), format!("check{i}/")).await {
            failed.push(format!("{name}: {why}"));
        }
    }
    if let Err(why) = conditional_writes(store.clone(), "conditions/".into(), enforced, true).await
    {
        failed.push(format!("conditional writes: {why}"));
    }
    assert!(
        failed.is_empty(),
        "{} checks failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[tokio::test]
async fn the_memory_store_conforms() {
    conforms(Arc::new(MemoryStore::new()), true).await;
    let like_garage = MemoryStore::new();
    like_garage.ignore_conditions(true);
    conforms(Arc::new(like_garage), false).await;
}

/// The S3 store over `env`, for `bucket`.
async fn s3_store(env: &S3Env, bucket: &str) -> Store {
    let config = s3mount::aws::load(Some(env.region.clone()), &Default::default())
        .await
        .expect("AWS configuration");
    let settings = S3Settings {
        bucket: bucket.to_string(),
        endpoint_url: Some(env.endpoint.clone()),
        region: Some(env.region.clone()),
        force_path_style: true,
    };
    Arc::new(S3Store::new(&config, &settings, Duration::from_secs(30)))
}

#[test]
fn the_s3_store_on_garage_conforms() {
    let env = S3Env::from_env();
    let bucket = common::TestBucket::new("conformance");
    bucket
        .rt
        .block_on(async { conforms(s3_store(&env, &bucket.name).await, false).await });
}

/// The store a mount uses, the S3 store behind the retrying store, through the
/// fault proxy: one request in five fails (every kind mixed, a stalled answer
/// held past the 2 s timeout), and the store still behaves as S3 does.
#[test]
fn the_retrying_s3_store_through_faults_conforms() {
    let env = S3Env::from_env();
    let bucket = common::TestBucket::new("faultconf");
    let proxy = FaultProxy::new(&env, 7, Rates::mixed(0.2), 4000);
    bucket.rt.block_on(async {
        let config = s3mount::aws::load(Some(env.region.clone()), &Default::default())
            .await
            .expect("AWS configuration");
        let settings = S3Settings {
            bucket: bucket.name.clone(),
            endpoint_url: Some(proxy.env.endpoint.clone()),
            region: Some(env.region.clone()),
            force_path_style: true,
        };
        let timeout = Duration::from_secs(2);
        let s3 = S3Store::new(&config, &settings, timeout);
        let retry = RetrySettings {
            retry_for: Duration::from_secs(60),
            request_timeout: timeout,
        };
        conforms(Arc::new(RetryingStore::new(s3, retry)), false).await;
    });
    let injected = proxy.injected();
    for kind in ["slowdown", "lost", "reset", "stall", "close"] {
        assert!(injected.contains_key(kind), "no {kind}: {injected:?}");
    }
}

/// moto, an S3 server that enforces conditions on PutObject (not on
/// CompleteMultipartUpload, which is left out here): the S3 store's conditional
/// headers are sent and its 412 understood.
#[test]
fn the_s3_store_on_moto_sends_conditions() {
    let env = S3Env::moto();
    let bucket = common::TestBucket::on(env.clone(), "cond");
    bucket.rt.block_on(async {
        let store = s3_store(&env, &bucket.name).await;
        if let Err(why) = conditional_writes(store, "conditions/".into(), true, false).await {
            panic!("conditional writes on moto: {why}");
        }
    });
}
