//! s3mount-bench: the direct client of the benchmark (the same aws-sdk-s3 as
//! s3mount, without FUSE) and the S3 helper of `scripts/bench.sh`.
//!
//! Settings come from the environment that `scripts/garage.sh start` writes
//! (S3_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). Every S3
//! command prints one line of `name=value` words on stdout, ending with `seconds=`
//! (time spent on S3, the client already built), `rss_mib=` (this process's peak
//! RSS) and `cpu_s=` (its CPU time, user and system). Errors print one line on
//! stderr and exit 1. `proxy` is the delay proxy the benchmark puts between every
//! tool and the server; `fault-proxy` fails a share of the requests it forwards,
//! for the tests (see their modules).

#[path = "s3mount_bench/faults.rs"]
mod faults;
#[path = "s3mount_bench/proxy.rs"]
mod proxy;
#[path = "s3mount_bench/tree.rs"]
mod tree;

use std::net::SocketAddr;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::stream::{self, StreamExt, TryStreamExt};

const PART_SIZE: u64 = 8 << 20;

/// The benchmark's direct S3 client and helper (see scripts/bench.sh).
#[derive(Parser, Debug)]
#[command(name = "s3mount-bench")]
struct Cli {
    /// S3-compatible endpoint (path-style addressing is used)
    #[arg(long, env = "S3_ENDPOINT", value_name = "URL")]
    endpoint_url: Option<String>,

    /// Region used for signing
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the man page s3mount(8), made from s3mount's options (scripts/package.sh)
    ManPage,
    /// Upload FILE as KEY: one PutObject up to 8 MiB, else a multipart upload of 8 MiB parts
    Put {
        file: PathBuf,
        bucket: String,
        key: String,
        /// Parts in flight
        #[arg(long, short, default_value_t = 8)]
        jobs: usize,
    },
    /// Download KEY into OUT (which may be /dev/null) with parallel ranged GETs of 8 MiB
    Get {
        bucket: String,
        key: String,
        out: PathBuf,
        /// Ranges in flight
        #[arg(long, short, default_value_t = 8)]
        jobs: usize,
    },
    /// Write COUNT objects of SIZE bytes, PREFIXfNNNNN (or PREFIXdNNN/fNNNNN with --dirs)
    PutMany {
        bucket: String,
        prefix: String,
        count: u64,
        size: usize,
        /// Write COUNT objects into each of this many directories
        #[arg(long)]
        dirs: Option<u64>,
        /// Another seed gives other bodies
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Uploads in flight
        #[arg(long, short, default_value_t = 32)]
        jobs: usize,
    },
    /// Download several objects at once (each as `get` does) and discard them
    GetMany {
        bucket: String,
        #[arg(required = true)]
        keys: Vec<String>,
        /// Ranges in flight for each object
        #[arg(long, short, default_value_t = 8)]
        jobs: usize,
    },
    /// Upload every file under DIR as PREFIX + its path below DIR
    PutTree {
        dir: PathBuf,
        bucket: String,
        prefix: String,
        /// Uploads in flight
        #[arg(long, short, default_value_t = 32)]
        jobs: usize,
    },
    /// List one directory (delimiter "/", every page): the `ls` equivalent
    List {
        bucket: String,
        prefix: String,
        /// Every key under PREFIX in one listing (no delimiter): what a sync needs
        #[arg(long)]
        recursive: bool,
    },
    /// List a tree directory by directory, several at a time: the `find` equivalent
    Walk {
        bucket: String,
        prefix: String,
        /// Directory listings in flight
        #[arg(long, short, default_value_t = 16)]
        jobs: usize,
    },
    /// COUNT ranged GETs of SIZE bytes at the offsets `offsets` prints, one at a time
    RandomReads {
        bucket: String,
        key: String,
        count: u64,
        size: u64,
        seed: u64,
    },
    /// Print COUNT offsets (SIZE-aligned, within OBJECT_SIZE) from SEED, one a line
    Offsets {
        object_size: u64,
        count: u64,
        size: u64,
        seed: u64,
    },
    /// Write a tree of DIRS x FILES files into DIR: DIR/dNNN/fNN.c
    Tree {
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        dirs: u64,
        #[arg(long, default_value_t = 20)]
        files: u64,
        #[arg(long, default_value_t = 1024)]
        min_size: u64,
        #[arg(long, default_value_t = 16384)]
        max_size: u64,
        /// Seed of the sizes: the same tree for the same seed
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Seed of the bodies (default: a new one each time)
        #[arg(long)]
        content_seed: Option<u64>,
    },
    /// Forward TCP connections to UPSTREAM, each direction delayed by half of DELAY_MS
    Proxy {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        #[arg(long, value_name = "ADDR")]
        upstream: SocketAddr,
        /// The round trip added to every exchange, in milliseconds
        #[arg(long)]
        delay_ms: u64,
    },
    /// Forward HTTP requests to UPSTREAM, failing a share of them (each rate from
    /// 0 to 1; see the module for what each fault does)
    FaultProxy {
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        #[arg(long, value_name = "ADDR")]
        upstream: SocketAddr,
        /// Seed of the draws
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Answer 503 SlowDown without forwarding
        #[arg(long, default_value_t = 0.0)]
        slowdown: f64,
        /// Forward, then answer 500: the server acted, its answer is lost
        #[arg(long, default_value_t = 0.0)]
        lost: f64,
        /// Break the connection part-way through the answer
        #[arg(long, default_value_t = 0.0)]
        reset: f64,
        /// Hold the answer for --stall-ms
        #[arg(long, default_value_t = 0.0)]
        stall: f64,
        #[arg(long, default_value_t = 5000)]
        stall_ms: u64,
        /// Close the connection once the answer is out, while the client idles on it
        #[arg(long, default_value_t = 0.0)]
        close: f64,
        /// Only requests of this method may meet a fault
        #[arg(long, value_name = "METHOD")]
        only_method: Option<String>,
        /// Only requests with this query parameter (uploadId, partNumber, ...)
        #[arg(long, value_name = "NAME")]
        only_query: Option<String>,
        /// Only requests with this header (x-amz-copy-source, ...)
        #[arg(long, value_name = "NAME")]
        only_header: Option<String>,
        /// Inject at most this many faults
        #[arg(long, value_name = "N")]
        max_faults: Option<usize>,
        /// Print a line per request with the headers that guard its body
        #[arg(long)]
        log_requests: bool,
        /// Refuse requests with checksum headers, as a server without them does
        #[arg(long)]
        refuse_checksums: bool,
    },
    /// Wait until KEY exists with SIZE bytes
    Wait {
        bucket: String,
        key: String,
        size: u64,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Wait until at least N files (keys not ending in "/") exist under PREFIX
    WaitCount {
        bucket: String,
        prefix: String,
        n: u64,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

type Res<T> = Result<T, String>;

/// s3mount(8) in roff, from the definition of s3mount's command line.
fn man_page() -> std::process::ExitCode {
    use clap::CommandFactory;
    let command = s3mount::config::Cli::command();
    let mut out = Vec::new();
    match clap_mangen::Man::new(command).section("8").render(&mut out) {
        Ok(()) => {
            use std::io::Write;
            match std::io::stdout().write_all(&out) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&format!("cannot write the man page: {e}")),
            }
        }
        Err(e) => fail(&format!("cannot make the man page: {e}")),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::ManPage => return man_page(),
        Command::Offsets {
            object_size,
            count,
            size,
            seed,
        } => {
            return match offsets(object_size, count, size, seed) {
                Ok(list) => {
                    let text: Vec<String> = list.iter().map(u64::to_string).collect();
                    println!("{}", text.join("\n"));
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            };
        }
        Command::Tree {
            ref dir,
            dirs,
            files,
            min_size,
            max_size,
            seed,
            content_seed,
        } => {
            let shape = tree::Shape {
                dirs,
                files,
                min_size,
                max_size,
                seed,
            };
            return match tree::write(dir, &shape, content_seed.unwrap_or_else(tree::fresh_seed)) {
                Ok(line) => {
                    println!("{line}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            };
        }
        _ => {}
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    if let Command::Proxy {
        listen,
        upstream,
        delay_ms,
    } = cli.command
    {
        let delay = Duration::from_millis(delay_ms);
        return match rt.block_on(proxy::run(listen, upstream, delay)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    if let Command::FaultProxy {
        listen,
        upstream,
        seed,
        slowdown,
        lost,
        reset,
        stall,
        stall_ms,
        close,
        only_method,
        only_query,
        only_header,
        max_faults,
        log_requests,
        refuse_checksums,
    } = cli.command
    {
        let target = faults::Target {
            method: only_method,
            query: only_query,
            header: only_header,
            max: max_faults,
        };
        let rates = faults::Rates {
            slowdown,
            lost,
            reset,
            stall,
            close,
        };
        let stall_for = Duration::from_millis(stall_ms);
        let wire = faults::Wire {
            log_requests,
            refuse_checksums,
        };
        return match rt.block_on(faults::run(
            listen, upstream, seed, rates, target, stall_for, wire,
        )) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    match rt.block_on(run(cli)) {
        Ok(line) => {
            println!(
                "{line} rss_mib={} cpu_s={:.2}",
                peak_rss_mib(),
                cpu_seconds()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> std::process::ExitCode {
    eprintln!("s3mount-bench: {e}");
    std::process::ExitCode::FAILURE
}

/// A client set up as s3mount's (src/store/s3.rs) is.
async fn client(cli: &Cli) -> Res<Client> {
    let sdk_config = s3mount::aws::load(Some(cli.region.clone()), &Default::default()).await?;
    let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(url) = &cli.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    Ok(Client::from_conf(builder.build()))
}

async fn run(cli: Cli) -> Res<String> {
    let s3 = client(&cli).await?;
    let start = Instant::now();
    let line = match cli.command {
        Command::Put {
            file,
            bucket,
            key,
            jobs,
        } => put(&s3, &file, &bucket, &key, jobs).await?,
        Command::Get {
            bucket,
            key,
            out,
            jobs,
        } => get(&s3, &bucket, &key, &out, jobs).await?,
        Command::PutMany {
            bucket,
            prefix,
            count,
            size,
            dirs,
            seed,
            jobs,
        } => {
            put_many(
                &s3,
                &bucket,
                many_keys(&prefix, count, dirs),
                size,
                seed,
                jobs,
            )
            .await?
        }
        Command::GetMany { bucket, keys, jobs } => get_many(&s3, &bucket, &keys, jobs).await?,
        Command::PutTree {
            dir,
            bucket,
            prefix,
            jobs,
        } => put_tree(&s3, &dir, &bucket, &prefix, jobs).await?,
        Command::List {
            bucket,
            prefix,
            recursive: true,
        } => {
            let n = count_keys(&s3, &bucket, &prefix, |_| true).await?;
            format!("entries={n} files={n} dirs=0")
        }
        Command::List {
            bucket,
            prefix,
            recursive: false,
        } => {
            let (files, dirs) = list_dir(&s3, &bucket, &prefix).await?;
            format!(
                "entries={} files={} dirs={}",
                files + dirs.len(),
                files,
                dirs.len()
            )
        }
        Command::Walk {
            bucket,
            prefix,
            jobs,
        } => walk(&s3, &bucket, &prefix, jobs).await?,
        Command::RandomReads {
            bucket,
            key,
            count,
            size,
            seed,
        } => random_reads(&s3, &bucket, &key, count, size, seed).await?,
        Command::Wait {
            bucket,
            key,
            size,
            timeout,
        } => wait(&s3, &bucket, &key, size, timeout).await?,
        Command::WaitCount {
            bucket,
            prefix,
            n,
            timeout,
        } => wait_count(&s3, &bucket, &prefix, n, timeout).await?,
        Command::ManPage
        | Command::Offsets { .. }
        | Command::Tree { .. }
        | Command::Proxy { .. }
        | Command::FaultProxy { .. } => {
            return Err("this command is answered without a client".into());
        }
    };
    Ok(format!(
        "{line} seconds={:.3}",
        start.elapsed().as_secs_f64()
    ))
}

/// One line for an SDK error: the service's code and status, else the causes.
fn sdk<E>(what: &str, e: SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(ctx) => format!(
            "{what}: {} {}(HTTP {})",
            ctx.err().code().unwrap_or("error"),
            ctx.err()
                .message()
                .map(|m| format!("{m} "))
                .unwrap_or_default(),
            ctx.raw().status().as_u16()
        ),
        _ => {
            let mut line = format!("{what}: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                line = format!("{line}: {c}");
                cause = c.source();
            }
            line.replace('\n', " ")
        }
    }
}

fn joined(e: tokio::task::JoinError) -> String {
    format!("a task failed: {e}")
}

async fn put(s3: &Client, file: &Path, bucket: &str, key: &str, jobs: usize) -> Res<String> {
    let f = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    let f = Arc::new(f);
    if size <= PART_SIZE {
        let body = read_at(f, 0, size).await?;
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk("PutObject", e))?;
        return Ok(format!("bytes={size} parts=1"));
    }
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| sdk("CreateMultipartUpload", e))?;
    let upload_id = upload
        .upload_id()
        .ok_or("CreateMultipartUpload returned no upload id")?
        .to_string();
    let parts = size.div_ceil(PART_SIZE);
    let uploads = stream::iter(1..=parts)
        .map(|n| {
            let (s3, f) = (s3.clone(), f.clone());
            let (bucket, key, id) = (bucket.to_string(), key.to_string(), upload_id.clone());
            tokio::spawn(async move {
                let start = (n - 1) * PART_SIZE;
                let body = read_at(f, start, PART_SIZE.min(size - start)).await?;
                let number = i32::try_from(n).map_err(|_| "too many parts".to_string())?;
                let out = s3
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| sdk("UploadPart", e))?;
                Ok::<_, String>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            })
        })
        .buffer_unordered(jobs.max(1))
        .map(|joined_part| joined_part.map_err(joined).and_then(|part| part))
        .try_collect::<Vec<_>>()
        .await;
    let mut done = match uploads {
        Ok(done) => done,
        Err(e) => {
            // Best effort: the upload failed already, and that is the error to report.
            let _ = s3
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(e);
        }
    };
    done.sort_by_key(|p| p.part_number());
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await
        .map_err(|e| sdk("CompleteMultipartUpload", e))?;
    Ok(format!("bytes={size} parts={parts}"))
}

async fn read_at(f: Arc<File>, offset: u64, len: u64) -> Res<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; usize::try_from(len).map_err(|e| e.to_string())?];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| format!("reading the file at {offset}: {e}"))?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(joined)?
}

async fn object_size(s3: &Client, bucket: &str, key: &str) -> Res<u64> {
    let head = s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| sdk(&format!("HeadObject {key}"), e))?;
    head.content_length()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("HeadObject {key}: no Content-Length"))
}

async fn get_range(s3: &Client, bucket: &str, key: &str, start: u64, len: u64) -> Res<Bytes> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(format!("bytes={start}-{}", start + len - 1))
        .send()
        .await
        .map_err(|e| sdk(&format!("GetObject {key}"), e))?;
    let data = out
        .body
        .collect()
        .await
        .map_err(|e| format!("GetObject {key}: reading the body: {e}"))?
        .into_bytes();
    if data.len() as u64 != len {
        return Err(format!(
            "GetObject {key} at {start}: {} bytes, expected {len}",
            data.len()
        ));
    }
    Ok(data)
}

async fn get(s3: &Client, bucket: &str, key: &str, out: &Path, jobs: usize) -> Res<String> {
    let size = object_size(s3, bucket, key).await?;
    let f = Arc::new(File::create(out).map_err(|e| format!("{}: {e}", out.display()))?);
    stream::iter(0..size.div_ceil(PART_SIZE))
        .map(|n| {
            let (s3, f) = (s3.clone(), f.clone());
            let (bucket, key) = (bucket.to_string(), key.to_string());
            tokio::spawn(async move {
                let start = n * PART_SIZE;
                let data =
                    get_range(&s3, &bucket, &key, start, PART_SIZE.min(size - start)).await?;
                tokio::task::spawn_blocking(move || {
                    f.write_all_at(&data, start)
                        .map_err(|e| format!("writing the output: {e}"))
                })
                .await
                .map_err(joined)?
            })
        })
        .buffer_unordered(jobs.max(1))
        .map(|r| r.map_err(joined).and_then(|r| r))
        .try_collect::<()>()
        .await?;
    Ok(format!("bytes={size}"))
}

async fn get_many(s3: &Client, bucket: &str, keys: &[String], jobs: usize) -> Res<String> {
    let null = Path::new("/dev/null");
    let done =
        futures::future::try_join_all(keys.iter().map(|key| get(s3, bucket, key, null, jobs)))
            .await?;
    Ok(format!("objects={}", done.len()))
}

async fn put_tree(s3: &Client, dir: &Path, bucket: &str, prefix: &str, jobs: usize) -> Res<String> {
    let files = tree::files(dir)?;
    let n = files.len();
    let bytes = stream::iter(files)
        .map(|(path, rel)| {
            let (s3, bucket, key) = (s3.clone(), bucket.to_string(), format!("{prefix}{rel}"));
            tokio::spawn(async move {
                let data = tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let len = data.len() as u64;
                s3.put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| sdk(&format!("PutObject {key}"), e))?;
                Ok::<_, String>(len)
            })
        })
        .buffer_unordered(jobs.max(1))
        .map(|r| r.map_err(joined).and_then(|r| r))
        .try_fold(0, |sum, len| async move { Ok(sum + len) })
        .await?;
    Ok(format!("objects={n} bytes={bytes}"))
}

/// `PREFIXfNNNNN`, or with `dirs` `PREFIXdNNN/fNNNNN` (`count` in each directory).
fn many_keys(prefix: &str, count: u64, dirs: Option<u64>) -> Vec<String> {
    match dirs {
        None => (0..count).map(|i| format!("{prefix}f{i:05}")).collect(),
        Some(dirs) => (0..dirs)
            .flat_map(|d| (0..count).map(move |i| format!("{prefix}d{d:03}/f{i:05}")))
            .collect(),
    }
}

async fn put_many(
    s3: &Client,
    bucket: &str,
    keys: Vec<String>,
    size: usize,
    seed: u64,
    jobs: usize,
) -> Res<String> {
    let n = keys.len();
    // Distinct bodies: Garage stores blocks by content and skips writing one it has.
    let mut seed_state = seed;
    let base = splitmix64(&mut seed_state);
    let body = |i: usize| -> Bytes {
        let mut state = base ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut data: Vec<u8> = (0..size.div_ceil(8))
            .flat_map(|_| splitmix64(&mut state).to_le_bytes())
            .collect();
        data.truncate(size);
        Bytes::from(data)
    };
    stream::iter(keys.into_iter().enumerate())
        .map(|(i, key)| {
            let s3 = s3.clone();
            let bucket = bucket.to_string();
            let data = body(i);
            tokio::spawn(async move {
                s3.put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| sdk(&format!("PutObject {key}"), e))
            })
        })
        .buffer_unordered(jobs.max(1))
        .map(|r| r.map_err(joined).and_then(|r| r))
        .try_collect::<()>()
        .await?;
    Ok(format!("objects={n}"))
}

/// One directory's files (keys other than the prefix itself) and subdirectories.
async fn list_dir(s3: &Client, bucket: &str, prefix: &str) -> Res<(usize, Vec<String>)> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .delimiter("/")
        .into_paginator()
        .send();
    let (mut files, mut dirs) = (0, Vec::new());
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk(&format!("ListObjectsV2 {prefix}"), e))?;
        files += page
            .contents()
            .iter()
            .filter(|o| o.key() != Some(prefix))
            .count();
        dirs.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string)),
        );
    }
    Ok((files, dirs))
}

async fn walk(s3: &Client, bucket: &str, prefix: &str, jobs: usize) -> Res<String> {
    let (mut files, mut dirs) = (0, 0);
    let mut pending = vec![prefix.to_string()];
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        while running.len() < jobs.max(1) {
            let Some(dir) = pending.pop() else { break };
            let (s3, bucket) = (s3.clone(), bucket.to_string());
            running.push(tokio::spawn(
                async move { list_dir(&s3, &bucket, &dir).await },
            ));
        }
        let Some(done) = running.next().await else {
            break;
        };
        let (f, subdirs) = done.map_err(joined)??;
        files += f;
        dirs += subdirs.len();
        pending.extend(subdirs);
    }
    Ok(format!("dirs={dirs} files={files}"))
}

/// SplitMix64: small, fast, and easy to reproduce in any language.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn offsets(object_size: u64, count: u64, size: u64, seed: u64) -> Res<Vec<u64>> {
    let slots = object_size.checked_div(size).unwrap_or(0);
    if slots == 0 {
        return Err(format!(
            "no read of {size} bytes fits in {object_size} bytes"
        ));
    }
    let mut state = seed;
    Ok((0..count)
        .map(|_| splitmix64(&mut state) % slots * size)
        .collect())
}

async fn random_reads(
    s3: &Client,
    bucket: &str,
    key: &str,
    count: u64,
    size: u64,
    seed: u64,
) -> Res<String> {
    let object = object_size(s3, bucket, key).await?;
    let mut bytes = 0;
    for offset in offsets(object, count, size, seed)? {
        bytes += get_range(s3, bucket, key, offset, size).await?.len();
    }
    Ok(format!("reads={count} bytes={bytes}"))
}

const POLL: Duration = Duration::from_millis(20);

async fn wait(s3: &Client, bucket: &str, key: &str, size: u64, timeout: u64) -> Res<String> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut polls = 0;
    loop {
        polls += 1;
        let seen = object_size(s3, bucket, key).await;
        if seen.as_ref().is_ok_and(|n| *n == size) {
            return Ok(format!("bytes={size} polls={polls}"));
        }
        if Instant::now() >= deadline {
            let seen = match seen {
                Ok(n) => format!("{n} bytes"),
                Err(e) => e,
            };
            return Err(format!(
                "{key} did not reach {size} bytes within {timeout} s (last seen: {seen})"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Keys under `prefix` that are files (not directory markers), over every page.
async fn count_files(s3: &Client, bucket: &str, prefix: &str) -> Res<u64> {
    count_keys(s3, bucket, prefix, |k| {
        !k.ends_with('/') && !k.ends_with("_$folder$")
    })
    .await
}

/// Keys under `prefix` that `wanted` accepts, over every page.
async fn count_keys(
    s3: &Client,
    bucket: &str,
    prefix: &str,
    wanted: impl Fn(&str) -> bool,
) -> Res<u64> {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk(&format!("ListObjectsV2 {prefix}"), e))?;
        n += page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .filter(|k| wanted(k))
            .count() as u64;
    }
    Ok(n)
}

async fn wait_count(s3: &Client, bucket: &str, prefix: &str, n: u64, timeout: u64) -> Res<String> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut polls = 0;
    loop {
        polls += 1;
        let seen = count_files(s3, bucket, prefix).await;
        if let Ok(count) = seen
            && count >= n
        {
            return Ok(format!("files={count} polls={polls}"));
        }
        if Instant::now() >= deadline {
            let seen = match seen {
                Ok(count) => format!("{count} files"),
                Err(e) => e,
            };
            return Err(format!(
                "{prefix} did not reach {n} files within {timeout} s (last seen: {seen})"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The CPU time this process used so far, user and system, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// This process's peak resident set (VmHWM), in MiB; 0 if /proc does not say.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
