//! The retrying store over the memory store, on tokio's paused clock: faults
//! that pass are never errors, answers lost after the server acted are
//! recognised, and another writer's change still is one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::store::memory::MemoryStore;

const SETTINGS: RetrySettings = RetrySettings {
    retry_for: Duration::from_secs(60),
    request_timeout: Duration::from_secs(30),
};

fn store() -> Arc<RetryingStore<MemoryStore>> {
    Arc::new(RetryingStore::new(MemoryStore::new(), SETTINGS))
}

/// A multipart upload of `key` with one part for each of `bodies`, not
/// completed: its id and parts.
async fn parts_sent(
    store: &RetryingStore<MemoryStore>,
    key: &str,
    bodies: &[&[u8]],
) -> (String, Vec<CompletedPart>) {
    let id = store
        .create_multipart(key, &PutOptions::default())
        .await
        .unwrap()
        .id;
    let mut parts = Vec::new();
    for (number, body) in (1..).zip(bodies) {
        let body = Bytes::copy_from_slice(body);
        let crc32c = Some(Crc32c::of(&body));
        let etag = store
            .upload_part(key, &id, number, body, crc32c)
            .await
            .unwrap();
        let tag = PartTag { etag, crc32c };
        parts.push(CompletedPart { number, tag });
    }
    (id, parts)
}

fn down() -> StoreError {
    StoreError::Unreachable("connection reset".into())
}

#[tokio::test(start_paused = true)]
async fn faults_that_pass_are_retried_until_the_request_succeeds() {
    let store = store();
    let memory = store.inner();
    memory.insert("a", "hello");
    for _ in 0..20 {
        memory.fail_next(Op::Head, down());
        memory.fail_next(Op::Get, StoreError::Busy("SlowDown (HTTP 503)".into()));
    }
    assert_eq!(store.head("a").await.unwrap().size, 5);
    assert_eq!(
        &store.get_range("a", 0..5, None).await.unwrap()[..],
        b"hello"
    );
    assert_eq!(memory.calls(Op::Head), 21);
    assert_eq!(memory.calls(Op::Get), 21);
}

#[tokio::test(start_paused = true)]
async fn retries_end_when_the_retry_time_is_spent() {
    let store = store();
    let memory = store.inner();
    for _ in 0..10_000 {
        memory.fail_next(Op::List, down());
    }
    let started = Instant::now();
    let request = ListRequest {
        prefix: "",
        ..Default::default()
    };
    assert!(matches!(
        store.list(request).await,
        Err(StoreError::Unreachable(_))
    ));
    // Retried until the retry time is over, and no longer.
    assert_eq!(started.elapsed(), SETTINGS.retry_for);
    // Delays grow to their bound, not to minutes, and never to nothing.
    let calls = memory.calls(Op::List);
    assert!((30..=1200).contains(&calls), "{calls} attempts");
}

#[tokio::test(start_paused = true)]
async fn an_error_that_will_not_pass_is_returned_at_once() {
    let store = store();
    let memory = store.inner();
    memory.fail_next(Op::Head, StoreError::AccessDenied("AccessDenied".into()));
    assert!(matches!(
        store.head("a").await,
        Err(StoreError::AccessDenied(_))
    ));
    assert!(matches!(store.head("a").await, Err(StoreError::NotFound)));
    assert_eq!(memory.calls(Op::Head), 2);
}

/// A store holding "a", over a server that holds its answers for 10 minutes
/// until just before a first attempt is abandoned, then answers at once again.
fn store_stalling_once(settings: RetrySettings) -> Arc<RetryingStore<MemoryStore>> {
    let store = Arc::new(RetryingStore::new(MemoryStore::new(), settings));
    store.inner().insert("a", "x");
    store.inner().set_latency(Duration::from_secs(600));
    let same = store.clone();
    tokio::spawn(async move {
        tokio::time::sleep(settings.request_timeout - Duration::from_secs(1)).await;
        same.inner().set_latency(Duration::ZERO);
    });
    store
}

#[tokio::test(start_paused = true)]
async fn a_stalled_attempt_is_abandoned_and_made_again() {
    let store = store_stalling_once(SETTINGS);
    let started = Instant::now();
    assert_eq!(store.head("a").await.unwrap().size, 1);
    assert_eq!(store.inner().calls(Op::Head), 2);
    assert!(started.elapsed() < SETTINGS.request_timeout + Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_outlasts_the_retry_time_is_made_once_more() {
    // The first attempt is abandoned long after the retry time.
    let store = store_stalling_once(RetrySettings {
        retry_for: Duration::from_secs(10),
        ..SETTINGS
    });
    assert_eq!(store.head("a").await.unwrap().size, 1);
    assert_eq!(store.inner().calls(Op::Head), 2);
}

#[tokio::test(start_paused = true)]
async fn a_conditional_put_whose_answer_was_lost_is_ours() {
    let store = store();
    let memory = store.inner();
    memory.lose_next_answer(Op::Put);
    let body = Bytes::from_static(b"ours");
    let etag = store
        .put(
            "a",
            body.clone(),
            &PutOptions::default(),
            Some(&Condition::Absent),
        )
        .await
        .unwrap();
    assert_eq!(etag, etag::of_body(&body));
    assert_eq!(memory.object("a").unwrap().body, body);
    assert_eq!(
        memory.calls(Op::Put),
        2,
        "the retry met the first attempt's object"
    );
}

#[tokio::test(start_paused = true)]
async fn another_writers_object_met_by_a_retry_is_still_a_conflict() {
    let store = store();
    let memory = store.inner();
    // The first attempt never reached the server; another writer's did.
    memory.fail_next(Op::Put, down());
    memory.insert("a", "theirs");
    let result = store
        .put(
            "a",
            Bytes::from_static(b"ours"),
            &PutOptions::default(),
            Some(&Condition::Absent),
        )
        .await;
    assert_eq!(result, Err(StoreError::PreconditionFailed));
    assert_eq!(&memory.object("a").unwrap().body[..], b"theirs");
}

#[tokio::test(start_paused = true)]
async fn a_completion_whose_answer_was_lost_is_ours() {
    let store = store();
    let memory = store.inner();
    let (id, parts) = parts_sent(&store, "big", &[&[1; 1000], &[2; 1000]]).await;
    memory.lose_next_answer(Op::CompleteMultipart);
    let etag = store
        .complete_multipart("big", &id, parts, Some(&Condition::Absent))
        .await
        .unwrap();
    let stored = memory.object("big").unwrap();
    assert_eq!(stored.etag, etag);
    assert_eq!(stored.body.len(), 2000);
    assert_eq!(memory.calls(Op::CompleteMultipart), 2);
}

#[tokio::test(start_paused = true)]
async fn a_completion_of_an_upload_gone_otherwise_is_an_error() {
    let store = store();
    let memory = store.inner();
    let (id, parts) = parts_sent(&store, "big", &[b"part"]).await;
    // Aborted by someone else while the first attempt failed on the way.
    memory.fail_next(Op::CompleteMultipart, down());
    store.abort_multipart("big", &id).await.unwrap();
    let result = store.complete_multipart("big", &id, parts, None).await;
    assert_eq!(result, Err(StoreError::NotFound));
    assert!(memory.object("big").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_delete_or_an_abort_whose_answer_was_lost_is_done() {
    let store = store();
    let memory = store.inner();
    memory.insert("a", "x");
    memory.lose_next_answer(Op::Delete);
    store.delete("a").await.unwrap();
    assert!(memory.object("a").is_none());
    let id = store
        .create_multipart("b", &PutOptions::default())
        .await
        .unwrap()
        .id;
    memory.lose_next_answer(Op::AbortMultipart);
    store.abort_multipart("b", &id).await.unwrap();
    assert_eq!(memory.open_uploads(), 0);
    // Not retried, an abort of an upload already gone says so.
    assert_eq!(
        store.abort_multipart("b", &id).await,
        Err(StoreError::NotFound)
    );
}

#[tokio::test(start_paused = true)]
async fn a_metadata_copy_whose_answer_was_lost_is_ours() {
    let store = store();
    let memory = store.inner();
    // An object stored in parts: a copy onto itself gives it another ETag.
    let (id, parts) = parts_sent(&store, "a", &[b"body"]).await;
    let before = store
        .complete_multipart("a", &id, parts, None)
        .await
        .unwrap();
    let replace = PutOptions {
        content_type: Some("text/plain".into()),
        metadata: [("mode".to_string(), "33188".to_string())].into(),
    };
    memory.lose_next_answer(Op::Copy);
    let options = CopyOptions {
        replace: Some(replace.clone()),
        if_match: Some(before.clone()),
    };
    let after = store.copy("a", "a", &options).await.unwrap();
    let stored = memory.object("a").unwrap();
    assert_eq!(stored.etag, after);
    assert_ne!(after, before);
    assert_eq!(stored.metadata, replace.metadata);
    // A copy whose If-Match fails for another writer's change still fails.
    memory.insert("a", "theirs");
    memory.fail_next(Op::Copy, down());
    assert_eq!(
        store.copy("a", "a", &options).await,
        Err(StoreError::PreconditionFailed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_matches_its_checksum_is_reported_damaged_soon() {
    let store = store();
    let memory = store.inner();
    let id = store
        .create_multipart("a", &PutOptions::default())
        .await
        .unwrap()
        .id;
    // Faults of the wire between the answers that find the body damaged: the
    // error reported is still the body's, after a few attempts, not a minute's.
    for _ in 0..4 {
        memory.fail_next(Op::UploadPart, down());
    }
    let sent = store
        .upload_part(
            "a",
            &id,
            1,
            Bytes::from_static(b"body"),
            Some(Crc32c::of(b"other")),
        )
        .await;
    assert!(matches!(sent, Err(StoreError::Damaged(_))), "{sent:?}");
    assert_eq!(
        memory.calls(Op::UploadPart),
        4 + u64::from(DAMAGED_ATTEMPTS)
    );
}
