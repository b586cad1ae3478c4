//! `--metrics-addr HOST:PORT`: the mount's metrics in Prometheus text format,
//! served by metrics-exporter-prometheus. Counters and histograms are recorded
//! where things happen (S3 requests and bytes in the request layer, FUSE
//! requests in the adapter); the rest (uploads, unsaved changes, the cache,
//! CloudFront) is taken from the status report every second. Without
//! `--metrics-addr` no recorder is installed and recording does nothing.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::status::Report;
use crate::status::server::Reporter;

const FUSE_SECONDS: &str = "s3mount_fuse_request_duration_seconds";
/// From half a millisecond (a cached stat) to a minute (the close of a large
/// file that waits for its upload).
const FUSE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// How often the values taken from the status report are refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// A FUSE request of kind `op` was answered after `took`.
pub fn fuse_request(op: &'static str, took: Duration) {
    histogram!(FUSE_SECONDS, "op" => op).record(took.as_secs_f64());
}

/// An S3 request of kind `kind` ended.
pub fn s3_request(kind: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!("s3mount_s3_requests_total", "kind" => kind, "outcome" => outcome).increment(1);
}

pub fn bytes_sent(n: u64) {
    counter!("s3mount_s3_bytes_sent_total").increment(n);
}

pub fn bytes_received(n: u64) {
    counter!("s3mount_s3_bytes_received_total").increment(n);
}

/// Serve the metrics on `addr` from the runtime of `rt`, with the values of
/// `report` refreshed every second.
pub fn serve(
    addr: SocketAddr,
    rt: &tokio::runtime::Handle,
    report: Reporter,
) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("--metrics-addr {addr}: {e}");
    let builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(FUSE_SECONDS.into()), FUSE_BUCKETS)
        .map_err(|e| failed(&e))?;
    let (recorder, exporter) = {
        let _runtime = rt.enter();
        builder.build().map_err(|e| failed(&e))?
    };
    metrics::set_global_recorder(recorder).map_err(|e| failed(&e))?;
    rt.spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!("metrics endpoint {addr}: {e:?}");
        }
    });
    rt.spawn(async move {
        loop {
            publish(&report());
            tokio::time::sleep(REFRESH).await;
        }
    });
    Ok(())
}

fn publish(r: &Report) {
    gauge!("s3mount_uploads_in_progress").set(r.uploading.len() as f64);
    gauge!("s3mount_uploads_waiting").set(r.waiting as f64);
    gauge!("s3mount_uploads_failed").set(r.failed.len() as f64);
    gauge!("s3mount_unsaved_files").set(r.unsaved.files as f64);
    gauge!("s3mount_dirty_bytes").set(r.unsaved.bytes as f64);
    gauge!("s3mount_oldest_unsaved_change_seconds").set(r.unsaved.oldest_seconds.unwrap_or(0.0));
    gauge!("s3mount_cache_disk_bytes").set(r.cache.disk_bytes as f64);
    gauge!("s3mount_cache_disk_limit_bytes").set(r.cache.disk_limit as f64);
    counter!("s3mount_cache_hits_total").absolute(r.cache.hits);
    counter!("s3mount_cache_misses_total").absolute(r.cache.misses);
    if let Some(c) = &r.cloudfront {
        counter!("s3mount_cloudfront_paths_queued_total").absolute(c.queued);
        counter!("s3mount_cloudfront_paths_sent_total").absolute(c.sent);
        counter!("s3mount_cloudfront_paths_failed_total").absolute(c.failed);
        counter!("s3mount_cloudfront_invalidations_total").absolute(c.invalidations);
    }
}
