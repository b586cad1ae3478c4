//! Every option, its default and its parsing.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Mount an S3 bucket, or the keys under a prefix of it, as a local directory.
///
/// Files are objects and directories are key prefixes, so what you write is readable
/// by any other S3 tool. Reads go through ranged GETs; writes are staged on local
/// disk and uploaded when the file is closed (or fsync'd). A failed upload makes
/// close() fail and keeps the data in the cache directory.
///
/// Credentials come from the standard AWS chain: environment variables, profile
/// files (AWS_PROFILE), web identity, instance metadata.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "s3mount",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("VERGEN_GIT_DESCRIBE"), ")"),
    after_help = "Unmount with `fusermount3 -u MOUNTPOINT` (or `umount`, or Ctrl-C with --foreground).\nPending uploads finish before s3mount exits.\n`s3mount status [MOUNTPOINT]` shows what running mounts are doing (`s3mount status --help`)."
)]
pub struct Cli {
    /// The bucket, optionally with a key prefix to mount only the keys under it
    #[arg(value_name = "BUCKET[:PREFIX]")]
    pub source: String,

    /// An existing, empty directory to mount on
    pub mountpoint: PathBuf,

    /// S3 endpoint, for S3-compatible servers (default: AWS, or AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Region (default: from the AWS configuration, else us-east-1)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// AWS profile to use [default: AWS_PROFILE, else the default profile]
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// AWS credentials file [default: AWS_SHARED_CREDENTIALS_FILE, else
    /// ~/.aws/credentials]; for mounts at boot, which have no home directory
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,

    /// Address the bucket in the path (http://host/bucket), not as a subdomain
    #[arg(long)]
    pub force_path_style: bool,

    /// Stay in the foreground (default: go to the background once mounted)
    #[arg(long, short = 'f')]
    pub foreground: bool,

    /// Mount read-only
    #[arg(long)]
    pub read_only: bool,

    /// Directory for the block cache, staging files and logs [default: $XDG_CACHE_HOME/s3mount or ~/.cache/s3mount]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Most disk space the block cache takes (it survives remounts)
    #[arg(long, value_name = "SIZE", default_value = "5GiB", value_parser = parse_size)]
    pub cache_size: u64,

    /// Free space the block cache leaves on its filesystem; a file being written
    /// drops the parts S3 has from local disk when less is free
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub cache_min_free: u64,

    /// A new file written past this size drops the parts S3 has confirmed from
    /// local disk (they can then not be read back or changed until close)
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub offload_after: u64,

    /// Size of the blocks reads are fetched and cached in
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub block_size: u64,

    /// Memory for data: cached blocks, reads in flight and parts being uploaded
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub max_memory: u64,

    /// How long attributes and listings are trusted before S3 is asked again
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,

    /// How long a name found missing, or a directory listed or made empty, is
    /// trusted to stay so (default: the --metadata-ttl); 0 sees files other
    /// tools create at once
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub negative_metadata_ttl: Option<Duration>,

    /// Read the mode, owner and times of listed objects with a HEAD each, unless
    /// s3mount already knows them; without it a listing shows their size and
    /// Last-Modified time, and the mount's defaults (faster, exact for files
    /// written through s3mount on this machine)
    #[arg(long)]
    pub head_listed: bool,

    /// Owner of all files [default: the user who mounts]
    #[arg(long)]
    pub uid: Option<u32>,

    /// Group of all files [default: the group of the user who mounts]
    #[arg(long)]
    pub gid: Option<u32>,

    /// Permission bits of files, in octal
    #[arg(long, value_name = "OCTAL", default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u16,

    /// Permission bits of directories, in octal
    #[arg(long, value_name = "OCTAL", default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u16,

    /// Let other users than the one who mounts use the mount
    #[arg(long)]
    pub allow_other: bool,

    /// Mount on a directory that holds files (they are hidden while mounted)
    #[arg(long)]
    pub allow_nonempty: bool,

    /// Do not let programs be run from the mount
    #[arg(long)]
    pub noexec: bool,

    /// When another writer changed a file since this mount read it: keep both
    /// (theirs at the name, ours beside it as NAME.conflict-YYYYMMDD-HHMMSS, and
    /// close() fails with ESTALE), or overwrite theirs (last writer wins)
    #[arg(long, value_enum, value_name = "WHAT", default_value = "keep")]
    pub on_conflict: ConflictChoice,

    /// close() returns once the file is safe on local disk (its data and its
    /// journal record synced) instead of once S3 has it; uploads run in the
    /// background, a few at a time, fsync() still waits for S3 and returns its
    /// error, unmount waits for them, and a crash leaves them to the next mount
    #[arg(long)]
    pub background_uploads: bool,

    /// After SIGTERM or SIGINT, how long uploads may take before s3mount exits;
    /// what is not in S3 by then stays in the cache directory's journal, and the
    /// next mount of it makes the uploads
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stop_timeout: Duration,

    /// How long a request that fails in a way that may pass (no connection, a
    /// reset, a stall, 5xx, SlowDown) is made again before the error reaches the
    /// program; nothing is lost when it does (the data stays in the cache
    /// directory and the upload is tried again)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,

    /// A request that brings no answer or no byte of its body for this long is
    /// abandoned and made again (an upload gets more time by its size)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// HEAD each object before uploading over it, to catch another writer's
    /// change on servers that ignore If-Match / If-None-Match; `auto`: unless
    /// the endpoint is AWS S3, which enforces them
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    pub check_before_upload: CheckBeforeUpload,

    /// Serve Prometheus metrics on this address (`127.0.0.1:9464`; a host name
    /// is resolved once). Off unless given; listen on another address than
    /// localhost only if it is meant to be reached from elsewhere
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,

    /// Log level (error, warn, info, debug, trace); RUST_LOG, if set, wins
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log file [default: stderr in the foreground, CACHE_DIR/s3mount.log in the background]
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Invalidate the URL of each file changed through the mount in this CloudFront
    /// distribution, once S3 has the change
    #[arg(long, value_name = "ID", help_heading = "CloudFront")]
    pub cloudfront_distribution_id: Option<String>,

    /// URL path the mount's root is served under, when it is not `/` (the
    /// distribution's origin path differs from the mounted prefix)
    #[arg(
        long,
        value_name = "PATH",
        default_value = "",
        help_heading = "CloudFront",
        requires = "cloudfront_distribution_id"
    )]
    pub cloudfront_path_prefix: String,

    /// Also invalidate a directory's URL (`/dir/`) when its file of this name changes
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "CloudFront",
        requires = "cloudfront_distribution_id"
    )]
    pub cloudfront_index_document: Option<String>,

    /// Quiet time after the last change before the changes go out, in one
    /// invalidation
    #[arg(long, value_name = "DURATION", default_value = "2s", help_heading = "CloudFront",
          value_parser = humantime::parse_duration, requires = "cloudfront_distribution_id")]
    pub cloudfront_delay: Duration,

    /// Names of files never invalidated, as globs (repeat the option for more;
    /// `--cloudfront-ignore ''` ignores none)
    #[arg(long, value_name = "GLOB", help_heading = "CloudFront",
          default_values = crate::cdn::EDITOR_FILES, value_parser = parse_glob,
          requires = "cloudfront_distribution_id")]
    pub cloudfront_ignore: Vec<glob::Pattern>,

    /// CloudFront API endpoint, for a compatible or test server [default: AWS]
    #[arg(
        long,
        value_name = "URL",
        help_heading = "CloudFront",
        requires = "cloudfront_distribution_id"
    )]
    pub cloudfront_endpoint_url: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictChoice {
    Keep,
    Overwrite,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckBeforeUpload {
    Auto,
    Always,
    Never,
}

fn parse_glob(s: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(s).map_err(|e| format!("{s:?} is not a glob: {e}"))
}

/// A size like `1MiB`, `512KiB` or `10GB`.
fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{s:?} is not a size like 512KiB, 1MiB or 10GiB"))
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 0644"))
}

/// Bucket and key prefix from `BUCKET[:PREFIX]`; the prefix comes back as `""` or
/// ending in `/`.
pub fn parse_source(source: &str) -> Result<(String, String), String> {
    let (bucket, prefix) = source.split_once(':').unwrap_or((source, ""));
    if bucket.is_empty() || bucket.contains('/') {
        return Err(format!("{source:?} is not BUCKET or BUCKET:PREFIX"));
    }
    if !is_bucket_name(bucket) {
        return Err(format!(
            "{bucket:?} is not a valid bucket name: S3 bucket names are 3 to 63 lowercase \
             letters, digits, dots and hyphens, begin and end with a letter or digit, and \
             are not IP addresses"
        ));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_string(), prefix))
}

/// S3's naming rule for buckets: checked before any request, as a name that
/// breaks it fails later as a DNS or signature error that does not say why.
fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-';
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(allowed)
        && edge(bytes.first())
        && edge(bytes.last())
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// The cache directory when none is given.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("s3mount");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("s3mount");
    }
    // Mounts at boot (fstab, systemd) run without HOME; the cache holds uploads
    // not yet made, which must survive a reboot, so not under /tmp.
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/s3mount");
    }
    std::env::temp_dir().join(format!("s3mount-{}", nix::unistd::geteuid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_splits_into_bucket_and_prefix() {
        assert_eq!(parse_source("bkt").unwrap(), ("bkt".into(), "".into()));
        assert_eq!(parse_source("bkt:").unwrap(), ("bkt".into(), "".into()));
        assert_eq!(
            parse_source("bkt:/x/y/").unwrap(),
            ("bkt".into(), "x/y/".into())
        );
        assert!(parse_source(":x").is_err());
        assert!(parse_source("a/b").is_err());
    }

    #[test]
    fn bucket_names_follow_s3s_rule() {
        for good in ["abc", "my-bucket.example.com", "a1b", &"x".repeat(63)] {
            assert!(is_bucket_name(good), "{good}");
        }
        for bad in [
            "ab",
            "My_Bucket",
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.2",
            &"x".repeat(64),
        ] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
        assert!(
            parse_source("My_Bucket")
                .unwrap_err()
                .contains("not a valid bucket name")
        );
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("77777").is_err());
    }

    #[test]
    fn sizes_have_units() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn cloudfront_options_need_a_distribution() {
        let cli = Cli::parse_from(["s3mount", "b", "/mnt"]);
        assert_eq!(cli.cloudfront_distribution_id, None);
        assert_eq!(cli.cloudfront_delay, Duration::from_secs(2));
        assert_eq!(cli.cloudfront_ignore.len(), crate::cdn::EDITOR_FILES.len());
        assert!(Cli::try_parse_from(["s3mount", "b", "/mnt", "--cloudfront-delay", "5s"]).is_err());
        let cli = Cli::parse_from([
            "s3mount",
            "b",
            "/mnt",
            "--cloudfront-distribution-id",
            "E1",
            "--cloudfront-ignore",
            "*.tmp",
        ]);
        assert_eq!(
            cli.cloudfront_ignore,
            [glob::Pattern::new("*.tmp").unwrap()]
        );
    }

    #[test]
    fn defaults() {
        let cli = Cli::parse_from(["s3mount", "b", "/mnt"]);
        assert_eq!(cli.metadata_ttl, Duration::from_secs(1));
        assert_eq!(cli.negative_metadata_ttl, None);
        assert_eq!(cli.file_mode, 0o644);
        assert_eq!(cli.dir_mode, 0o755);
        assert!(!cli.foreground);
    }
}
