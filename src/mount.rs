//! Mounting: connect to S3, check the bucket, mount, serve until unmounted.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use nix::mount::MntFlags;

use crate::cache::CacheConfig;
use crate::cache::disk::DiskLimits;
use crate::cdn::cloudfront::{CdnError, CloudFront};
use crate::cdn::paths::UrlPaths;
use crate::cdn::saved::SavedQueue;
use crate::cdn::{Batching, COLLAPSE_ABOVE, CdnSettings, Invalidator};
use crate::config::{CheckBeforeUpload, Cli, ConflictChoice, default_cache_dir, parse_source};
use crate::daemon::Readiness;
use crate::fs::changes::Changes;
use crate::fs::{Fs, FsConfig, OnConflict, RetryPolicy};
use crate::fuse::S3Fuse;
use crate::store::counting::CountingStore;
use crate::store::retry::{RetrySettings, RetryingStore};
use crate::store::s3::{S3Settings, S3Store};
use crate::store::{ListRequest, ObjectStore, StoreError};

/// How long the mount waits for S3 to answer its first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the mount's first listing is made again while it fails in a way
/// that may pass.
const CHECK_RETRY_FOR: Duration = Duration::from_secs(5);
/// Threads reading requests from the kernel (each holds a 16 MiB buffer); the work
/// itself runs on tokio.
const FUSE_THREADS: usize = 2;
/// How long the unmount waits for the last CloudFront invalidations to go.
const CDN_FLUSH_WAIT: Duration = Duration::from_secs(30);
/// The longest batching delay: changes wait at most ten of them.
const MAX_CDN_DELAY: Duration = Duration::from_secs(3600);

/// Everything a mount needs, checked.
pub struct MountConfig {
    pub settings: S3Settings,
    pub retry: RetrySettings,
    pub prefix: String,
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub fs: FsConfig,
    pub profile: crate::aws::Profile,
    pub allow_other: bool,
    pub noexec: bool,
    pub stop_timeout: Duration,
    pub foreground: bool,
    pub log_level: String,
    pub log_file: Option<PathBuf>,
    pub cdn: Option<CdnSettings>,
    pub check_before_upload: CheckBeforeUpload,
    pub metrics_addr: Option<SocketAddr>,
}

impl MountConfig {
    /// Check the command line; `mountpoint` is the already checked, canonical path.
    pub fn new(cli: Cli, mountpoint: PathBuf) -> Result<Self, String> {
        let (bucket, prefix) = parse_source(&cli.source)?;
        if !(64 << 10..=64 << 20).contains(&cli.block_size) {
            return Err(format!(
                "--block-size {} is outside 64KiB..64MiB",
                bytesize::ByteSize(cli.block_size)
            ));
        }
        if cli.request_timeout < Duration::from_secs(1) {
            return Err("--request-timeout must be at least 1s".into());
        }
        let cache_dir = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
        crate::private::create_dir(&cache_dir)
            .map_err(|e| format!("cache directory {}: {e}", cache_dir.display()))?;
        // The background process changes directory; keep paths absolute.
        let cache_dir = cache_dir
            .canonicalize()
            .map_err(|e| format!("cache directory {}: {e}", cache_dir.display()))?;
        if cli.cloudfront_delay > MAX_CDN_DELAY {
            return Err(format!(
                "--cloudfront-delay {} is over {}",
                humantime::format_duration(cli.cloudfront_delay),
                humantime::format_duration(MAX_CDN_DELAY)
            ));
        }
        if let Some(name) = &cli.cloudfront_index_document
            && (name.is_empty() || name.contains('/'))
        {
            return Err(format!(
                "--cloudfront-index-document {name:?} is not a file name"
            ));
        }
        let cdn = cli
            .cloudfront_distribution_id
            .clone()
            .map(|id| CdnSettings {
                distribution_id: id,
                endpoint_url: cli.cloudfront_endpoint_url.clone(),
                urls: UrlPaths::new(
                    &cli.cloudfront_path_prefix,
                    cli.cloudfront_index_document.clone(),
                ),
                batching: Batching {
                    delay: cli.cloudfront_delay,
                    collapse_above: COLLAPSE_ABOVE,
                    ignore: cli.cloudfront_ignore.clone(),
                },
            });
        // Checked here: the SDK would silently go on without a file it cannot read.
        // Absolute, as the background process changes directory.
        let credentials_file = cli
            .credentials_file
            .as_ref()
            .map(|f| {
                std::fs::File::open(f)
                    .and_then(|_| f.canonicalize())
                    .map_err(|e| format!("credentials file {}: {e}", f.display()))
            })
            .transpose()?;
        let metrics_addr = cli
            .metrics_addr
            .as_deref()
            .map(|addr| {
                addr.to_socket_addrs()
                    .map_err(|e| format!("--metrics-addr {addr}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--metrics-addr {addr}: no address"))
            })
            .transpose()?;
        let log_file = cli
            .log_file
            .clone()
            .or_else(|| (!cli.foreground).then(|| cache_dir.join("s3mount.log")));
        Ok(Self {
            settings: S3Settings {
                bucket: bucket.clone(),
                endpoint_url: cli.endpoint_url.clone(),
                region: cli.region.clone(),
                force_path_style: cli.force_path_style,
            },
            retry: RetrySettings {
                retry_for: cli.retry_for,
                request_timeout: cli.request_timeout,
            },
            fs: FsConfig {
                prefix: prefix.clone(),
                uid: cli.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw()),
                gid: cli.gid.unwrap_or_else(|| nix::unistd::getegid().as_raw()),
                file_mode: cli.file_mode,
                dir_mode: cli.dir_mode,
                metadata_ttl: cli.metadata_ttl,
                negative_ttl: cli.negative_metadata_ttl.unwrap_or(cli.metadata_ttl),
                head_listed: cli.head_listed,
                read_only: cli.read_only,
                bucket: bucket.clone(),
                cache_dir: cache_dir.clone(),
                on_conflict: match cli.on_conflict {
                    ConflictChoice::Keep => OnConflict::Keep,
                    ConflictChoice::Overwrite => OnConflict::Overwrite,
                },
                // Settled in `run`, once the endpoint is known.
                check_before_upload: true,
                retry: RetryPolicy::default(),
                cache: CacheConfig {
                    block_size: cli.block_size,
                    memory_bytes: cli.max_memory / 4,
                    in_flight_bytes: cli.max_memory / 4,
                    disk: Some((
                        cache_dir.join("blocks"),
                        DiskLimits {
                            max_bytes: cli.cache_size,
                            min_free: cli.cache_min_free,
                        },
                    )),
                },
                upload_memory: cli.max_memory / 2,
                background_uploads: cli.background_uploads,
                offload_after: cli.offload_after,
            },
            prefix,
            mountpoint,
            cache_dir,
            profile: crate::aws::Profile {
                name: cli.profile.clone(),
                credentials_file,
            },
            allow_other: cli.allow_other,
            noexec: cli.noexec,
            stop_timeout: cli.stop_timeout,
            foreground: cli.foreground,
            log_level: cli.log_level,
            log_file,
            cdn,
            check_before_upload: cli.check_before_upload,
            metrics_addr,
        })
    }
}

/// Mount and serve until unmounted (or SIGINT/SIGTERM). Errors before the mount is
/// ready come back as one line for the user; each step says what it was doing.
pub fn run(mut config: MountConfig, readiness: &mut Readiness) -> Result<(), String> {
    let (_lock, tightened) = lock_cache_dir(&config)?;
    let log = start_logging(&config, &tightened)?;
    let rt = start_runtime()?;
    let (store, cdn) = rt.block_on(connect(&mut config))?;
    let fs = open_filesystem(&rt, &config, &store, cdn.clone())?;
    let reporter = reporter(&config, &store, &fs, cdn.clone(), log.clone());
    let _status = serve_status(&rt, &config, reporter, log)?;
    let session = mount_fuse(&config, fs, &rt)?;
    serve(session, &rt, &config, readiness, &store, cdn)
}

/// Lock the cache directory (before anything else, so that a second mount on it
/// fails at once, and before anything of this run lands in it) and make it
/// private; what had to be made private is logged once logging runs.
fn lock_cache_dir(
    config: &MountConfig,
) -> Result<(crate::private::CacheLock, Vec<String>), String> {
    let tightened = crate::private::tighten(&config.cache_dir)
        .map_err(|e| format!("cache directory {}: {e}", config.cache_dir.display()))?;
    let holder = format!(
        "s3://{}/{} on {}, process {}",
        config.settings.bucket,
        config.prefix,
        config.mountpoint.display(),
        std::process::id()
    );
    let lock = crate::private::lock(&config.cache_dir, &holder)?;
    Ok((lock, tightened))
}

fn start_logging(
    config: &MountConfig,
    tightened: &[String],
) -> Result<Arc<crate::logging::LogControl>, String> {
    let log = Arc::new(crate::logging::init(
        &config.log_level,
        config.log_file.as_deref(),
    )?);
    if !tightened.is_empty() {
        tracing::warn!(
            "made private (only its owner may read them): {}",
            tightened.join(", ")
        );
    }
    Ok(log)
}

fn start_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3mount")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

type Store = Arc<RetryingStore<CountingStore<S3Store>>>;

/// Load the AWS configuration, check that the bucket answers (and the CloudFront
/// distribution, if any), and start the invalidation queue.
async fn connect(config: &mut MountConfig) -> Result<(Store, Option<Arc<Invalidator>>), String> {
    let sdk_config = crate::aws::load(config.settings.region.clone(), &config.profile).await?;
    config.fs.check_before_upload = match config.check_before_upload {
        CheckBeforeUpload::Always => true,
        CheckBeforeUpload::Never => false,
        // AWS S3 enforces If-Match and If-None-Match; other servers may not.
        CheckBeforeUpload::Auto => config
            .settings
            .endpoint_url
            .as_deref()
            .or_else(|| sdk_config.endpoint_url())
            .is_some(),
    };
    let store = S3Store::new(&sdk_config, &config.settings, config.retry.request_timeout);
    let region = Region(
        sdk_config
            .region()
            .map_or_else(|| "us-east-1".to_string(), |r| r.to_string()),
    );
    let url = config.settings.endpoint_url.as_deref();
    let endpoint = Endpoint::of(url.or_else(|| sdk_config.endpoint_url()), &region);
    check_bucket(&store, config, &endpoint, &region).await?;
    let cdn = match &config.cdn {
        Some(settings) => Some(start_cdn(&sdk_config, settings, &config.cache_dir).await?),
        None => None,
    };
    let store = RetryingStore::new(CountingStore::new(store), config.retry);
    Ok((Arc::new(store), cdn))
}

/// How a message names the S3 endpoint: host and port where one was given.
struct Endpoint(String);

/// The region requests are signed for.
struct Region(String);

impl Endpoint {
    fn of(url: Option<&str>, region: &Region) -> Self {
        match url {
            Some(url) => Endpoint(host_and_port(url)),
            None => Endpoint(format!("S3 in {}", region.0)),
        }
    }
}

/// `host:port` of an endpoint URL (the scheme's port if none is written).
fn host_and_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let has_port = authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    });
    if has_port {
        authority.to_string()
    } else if scheme.eq_ignore_ascii_case("http") {
        format!("{authority}:80")
    } else {
        format!("{authority}:443")
    }
}

/// Ask S3 for one key of the mount, so that a wrong bucket, wrong credentials or an
/// endpoint that does not answer fail the mount with a clear reason.
async fn check_bucket(
    store: &dyn ObjectStore,
    config: &MountConfig,
    endpoint: &Endpoint,
    region: &Region,
) -> Result<(), String> {
    let bucket = &config.settings.bucket;
    let endpoint = &endpoint.0;
    let request = || store.list(ListRequest::one_entry(&config.prefix));
    // A fault that passes (a reset, a 503) is not a reason to refuse the mount;
    // an endpoint that stays unreachable is, after a few seconds.
    let deadline = tokio::time::Instant::now() + CHECK_RETRY_FOR;
    let answer = loop {
        match answer_within(endpoint, request()).await? {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tracing::debug!("the first listing of bucket {bucket} failed ({e}); again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            answer => break answer,
        }
    };
    if let Err(StoreError::Other(why)) = &answer
        && let Some(theirs) = expected_region(why)
    {
        return Err(format!(
            "wrong region {}: {endpoint} expects region {theirs}; use --region {theirs}",
            region.0
        ));
    }
    match answer {
        Ok(_) => Ok(()),
        Err(StoreError::NoSuchBucket) => {
            Err(format!("bucket {bucket} does not exist on {endpoint}"))
        }
        Err(StoreError::AccessDenied(why)) if credentials_refused(&why) => Err(format!(
            "{endpoint} refused the credentials ({why}); check the access key and the secret key"
        )),
        Err(StoreError::AccessDenied(why)) => Err(format!(
            "access denied to bucket {bucket}: listing it (ListObjectsV2) was refused ({why}); \
             check the credentials and the bucket's policy"
        )),
        Err(StoreError::NoCredentials(why)) => Err(why),
        Err(StoreError::Unreachable(why)) => Err(format!("cannot reach {endpoint}: {why}")),
        Err(StoreError::Busy(why)) => Err(format!("{endpoint} keeps failing: {why}")),
        Err(e) => Err(format!("cannot list bucket {bucket}: {e}")),
    }
}

/// Does S3's reason for a 403 say the key or its signature is wrong, rather than
/// that the key may not do this? AWS says so by its error code; Garage answers
/// AccessDenied, with "Invalid signature" or "No such key" in the message.
fn credentials_refused(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    [
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "invalidtoken",
        "expiredtoken",
        "invalid signature",
        "no such key",
    ]
    .iter()
    .any(|sign| why.contains(sign))
}

/// The region a server says it expects, from its answer to a request signed for
/// another: AWS's "the region 'a' is wrong; expecting 'b'", Garage's "unexpected
/// scope: '.../a/s3/aws4_request', expected: '.../b/s3/aws4_request'".
fn expected_region(why: &str) -> Option<String> {
    let quoted = |after: &str| {
        let start = why.find(after)? + after.len();
        let rest = &why[start..];
        Some(rest[..rest.find('\'')?].to_string())
    };
    if let Some(region) = quoted("expecting '") {
        return Some(region);
    }
    let scope = quoted("expected: '")?;
    scope.split('/').nth(1).map(str::to_string)
}

/// The answer of `endpoint` to the mount's first request, or why none came in
/// time.
async fn answer_within<T>(endpoint: &str, request: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, request)
        .await
        .map_err(|_| {
            format!(
                "no answer from {endpoint} within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })
}

/// Check the CloudFront distribution and start sending its invalidations,
/// beginning with those an earlier run saved.
async fn start_cdn(
    sdk_config: &aws_config::SdkConfig,
    settings: &CdnSettings,
    cache_dir: &Path,
) -> Result<Arc<Invalidator>, String> {
    let cloudfront = CloudFront::new(
        sdk_config,
        settings.endpoint_url.clone(),
        &settings.distribution_id,
    );
    check_distribution(&cloudfront, settings).await?;
    let path = cache_dir
        .join("journal")
        .join(format!("cloudfront-{}.queue", settings.distribution_id));
    let saved = SavedQueue::open(path.clone())
        .map_err(|e| format!("CloudFront queue {}: {e}", path.display()))?;
    Ok(Arc::new(Invalidator::start(
        Arc::new(cloudfront),
        settings.urls.clone(),
        settings.batching.clone(),
        &tokio::runtime::Handle::current(),
        Some(saved),
    )))
}

/// Ask CloudFront for the distribution, so that a wrong id, credentials that may
/// not use it or an endpoint that does not answer fail the mount.
async fn check_distribution(cloudfront: &CloudFront, settings: &CdnSettings) -> Result<(), String> {
    let id = &settings.distribution_id;
    let endpoint = settings
        .endpoint_url
        .as_deref()
        .map_or_else(|| "CloudFront".into(), host_and_port);
    match answer_within(&endpoint, cloudfront.check()).await? {
        Ok(()) => Ok(()),
        Err(CdnError::NoSuchDistribution) => {
            Err(format!("CloudFront distribution {id} does not exist"))
        }
        Err(CdnError::AccessDenied(why)) => Err(format!(
            "access denied to CloudFront distribution {id} ({why}); check the credentials"
        )),
        Err(CdnError::Transient(why)) => Err(format!("cannot reach {endpoint}: {why}")),
        Err(CdnError::Rejected(why)) => {
            Err(format!("cannot use CloudFront distribution {id}: {why}"))
        }
    }
}

/// The filesystem, with the journal of an earlier run taken up: before the first
/// request, so that its files show their new content from the start.
fn open_filesystem(
    rt: &tokio::runtime::Runtime,
    config: &MountConfig,
    store: &Store,
    cdn: Option<Arc<Invalidator>>,
) -> Result<Arc<Fs>, String> {
    let _runtime = rt.enter();
    let changes = cdn.map(|c| c as Arc<dyn Changes>);
    let fs = Fs::new(store.clone(), config.fs.clone(), changes)
        .map_err(|e| format!("cache directory {}: {e}", config.cache_dir.display()))?;
    let counted = store.clone();
    fs.count_sent_with(Arc::new(move |key| {
        counted
            .inner()
            .uploads()
            .get(key)
            .map_or(0, |(sent, _)| *sent)
    }));
    rt.block_on(fs.resume())
        .map_err(|e| format!("journal in {}: {e}", config.cache_dir.display()))?;
    Ok(fs)
}

/// SIGUSR2 (log level), the metrics endpoint and the status socket. Before the
/// mount is ready: from then on, a SIGUSR2 must not kill it. A mount without its
/// status view still serves its files.
fn serve_status(
    rt: &tokio::runtime::Runtime,
    config: &MountConfig,
    reporter: crate::status::server::Reporter,
    log: Arc<crate::logging::LogControl>,
) -> Result<Option<crate::status::server::StatusSocket>, String> {
    let usr2 = {
        let _runtime = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
    };
    rt.spawn(change_log_level_on_sigusr2(usr2, log.clone()));
    if let Some(addr) = config.metrics_addr {
        crate::metrics::serve(addr, rt.handle(), reporter.clone())?;
        tracing::info!("metrics on http://{addr}/metrics");
    }
    Ok(
        match crate::status::server::start(rt.handle(), reporter, log) {
            Ok(socket) => {
                tracing::info!(
                    "status: s3mount status (socket {})",
                    socket.path().display()
                );
                Some(socket)
            }
            Err(e) => {
                tracing::warn!("s3mount status will not see this mount: {e}");
                None
            }
        },
    )
}

fn mount_fuse(
    config: &MountConfig,
    fs: Arc<Fs>,
    rt: &tokio::runtime::Runtime,
) -> Result<fuser::Session<S3Fuse>, String> {
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName(format!("s3mount:{}", config.settings.bucket)),
        MountOption::Subtype("s3mount".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        if config.fs.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    if config.noexec {
        options.mount_options.push(MountOption::NoExec);
    }
    if config.allow_other {
        options.acl = SessionACL::All;
    }
    options.n_threads = Some(FUSE_THREADS);
    let session = fuser::Session::new(
        S3Fuse::new(fs, rt.handle().clone()),
        &config.mountpoint,
        &options,
    )
    .map_err(|e| format!("cannot mount on {}: {e}", config.mountpoint.display()))?;
    tracing::info!(
        "mounted s3://{}/{} on {}",
        config.settings.bucket,
        config.prefix,
        config.mountpoint.display()
    );
    Ok(session)
}

/// Serve FUSE requests until the mount is unmounted, or a signal asks for it;
/// then wait (a bounded time after a signal) for the last uploads and
/// invalidations.
fn serve(
    session: fuser::Session<S3Fuse>,
    rt: &tokio::runtime::Runtime,
    config: &MountConfig,
    readiness: &mut Readiness,
    store: &Store,
    cdn: Option<Arc<Invalidator>>,
) -> Result<(), String> {
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let serving = std::thread::spawn(move || {
        let result = session.run();
        let _ = done_tx.send(());
        result
    });
    // Ready once the mount answers, not once it exists: mount(8) returns, and
    // systemd starts what needs the mount, then.
    match std::fs::metadata(&config.mountpoint) {
        Ok(_) => readiness.ready(),
        Err(e) => {
            let message = format!(
                "the mount on {} does not answer: {e}",
                config.mountpoint.display()
            );
            tracing::error!("{message}");
            readiness.failed(&message);
        }
    }
    let finished = rt.block_on(async {
        tokio::select! {
            _ = &mut done_rx => true,
            signal = shutdown_signal() => {
                crate::daemon::stopping();
                tracing::info!("{signal}: unmounting {}", config.mountpoint.display());
                if let Err(e) = detach(&config.mountpoint) {
                    tracing::error!("cannot unmount {}: {e}", config.mountpoint.display());
                }
                tokio::time::timeout(config.stop_timeout, done_rx).await.is_ok()
            }
        }
    });
    if !finished {
        // Bounded, as a service manager expects: what is not in S3 yet is in the
        // write-back journal (or, for a file still open, staged to be put aside),
        // and the next mount of this cache directory takes it from there.
        tracing::warn!(
            "uploads not finished {} after the signal; the next mount with cache directory {} makes them; {}",
            humantime::format_duration(config.stop_timeout),
            config.cache_dir.display(),
            store.inner().summary()
        );
        std::process::exit(0);
    }
    let served = serving.join();
    tracing::info!(
        "unmounted {}; {}",
        config.mountpoint.display(),
        store.inner().summary()
    );
    if let Some(cdn) = cdn {
        rt.block_on(cdn.finish(CDN_FLUSH_WAIT));
        tracing::info!("{}", cdn.summary());
    }
    let result = served.map_err(|_| "the FUSE session panicked".to_string())?;
    result.map_err(|e| format!("FUSE session ended with an error: {e}"))
}

/// What `s3mount status` shows of this mount, gathered when asked.
fn reporter(
    config: &MountConfig,
    store: &Store,
    fs: &Arc<Fs>,
    cdn: Option<Arc<Invalidator>>,
    log: Arc<crate::logging::LogControl>,
) -> crate::status::server::Reporter {
    let source = format!("s3://{}/{}", config.settings.bucket, config.prefix);
    let (mountpoint, cache_dir) = (config.mountpoint.clone(), config.cache_dir.clone());
    let (store, fs) = (Arc::clone(store), Arc::downgrade(fs));
    Arc::new(move || {
        let store = store.inner();
        let fs = fs.upgrade();
        let (uploads, failed, conflicts) = fs
            .as_ref()
            .map(|fs| fs.board().snapshot())
            .unwrap_or_default();
        let (bytes_sent, bytes_received) = store.bytes();
        crate::status::Report {
            source: source.clone(),
            mountpoint: mountpoint.clone(),
            pid: std::process::id(),
            cache_dir: cache_dir.clone(),
            log_level: log.level(),
            uploading: crate::status::uploading(&uploads, store.uploads(), &failed),
            waiting: fs.as_ref().map_or(0, |fs| fs.waiting()),
            unsaved: fs
                .as_ref()
                .map(|fs| {
                    let (files, bytes, oldest) = fs.unsaved_changes();
                    crate::status::Unsaved {
                        files,
                        bytes,
                        oldest_seconds: oldest.map(|d| d.as_secs_f64()),
                    }
                })
                .unwrap_or_default(),
            failed,
            conflicts,
            cache: fs.as_ref().map(|fs| fs.cache_stats()).unwrap_or_default(),
            requests: store
                .requests()
                .into_iter()
                .map(|(kind, n)| (kind.to_string(), n))
                .collect(),
            bytes_sent,
            bytes_received,
            cloudfront: cdn.as_ref().map(|c| c.stats()),
        }
    })
}

/// Lazy unmount: the mount leaves the directory tree at once, files still open keep
/// working, and the FUSE session ends (uploading what is left) when the last of them
/// is closed. Only root may unmount directly; others go through fusermount3.
fn detach(mountpoint: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let out = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(mountpoint)
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Each SIGUSR2 steps the log to the next level (error, warn, info, debug,
/// trace, and round again).
async fn change_log_level_on_sigusr2(
    usr2: std::io::Result<tokio::signal::unix::Signal>,
    log: Arc<crate::logging::LogControl>,
) {
    match usr2 {
        Ok(mut usr2) => {
            while usr2.recv().await.is_some() {
                log.step();
            }
        }
        Err(e) => tracing::warn!("SIGUSR2 will not change the log level: {e}"),
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, wait for the unmount instead.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_a_server_expects_is_read_from_its_answer() {
        let garage = "AuthorizationHeaderMalformed Authorization header malformed, unexpected \
                      scope: '20261207/us-west-2/s3/aws4_request', expected: \
                      '20261207/garage/s3/aws4_request' (HTTP 400)";
        assert_eq!(expected_region(garage).as_deref(), Some("garage"));
        let aws = "AuthorizationHeaderMalformed The authorization header is malformed; the \
                   region 'us-east-1' is wrong; expecting 'eu-west-1' (HTTP 400)";
        assert_eq!(expected_region(aws).as_deref(), Some("eu-west-1"));
        assert_eq!(expected_region("AccessDenied (HTTP 403)"), None);
    }

    #[test]
    fn endpoints_are_named_by_host_and_port() {
        assert_eq!(host_and_port("http://127.0.0.1:3900"), "127.0.0.1:3900");
        assert_eq!(
            host_and_port("https://s3.example.com/"),
            "s3.example.com:443"
        );
        assert_eq!(host_and_port("http://minio"), "minio:80");
        assert_eq!(host_and_port("https://[::1]:9000/x"), "[::1]:9000");
    }
}
