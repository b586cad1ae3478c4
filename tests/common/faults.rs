//! The proxies of s3mount-bench in front of a test's S3 server: the fault
//! proxy fails a share of the requests as a bad network and a busy server do,
//! the delay proxy makes it as far away as a remote region.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::S3Env;

/// The share of requests that meets each fault (see the proxy's module).
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub slowdown: f64,
    pub lost: f64,
    pub reset: f64,
    pub stall: f64,
    pub close: f64,
}

impl Rates {
    /// Every request that may meet a fault loses its answer.
    pub fn lost() -> Self {
        Self {
            slowdown: 0.0,
            lost: 1.0,
            reset: 0.0,
            stall: 0.0,
            close: 0.0,
        }
    }

    /// Every kind mixed, `share` of the requests in all.
    pub fn mixed(share: f64) -> Self {
        let each = share / 5.0;
        Self {
            slowdown: each,
            lost: each,
            reset: each,
            stall: each,
            close: each,
        }
    }
}

/// A running fault proxy, killed on drop.
pub struct FaultProxy {
    child: Child,
    /// Settings for a client that goes through the proxy.
    pub env: S3Env,
    /// One line per fault injected (`fault=KIND method=M path=P`).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    /// In front of `env`'s server, drawing from `seed`; a stalled answer is
    /// held for `stall_ms`.
    pub fn new(env: &S3Env, seed: u64, rates: Rates, stall_ms: u64) -> Self {
        Self::narrowed(env, seed, rates, stall_ms, &[])
    }

    /// The same, with the proxy's options that narrow the faults to some
    /// requests (`--only-method POST --only-query uploadId --max-faults 1`).
    pub fn narrowed(env: &S3Env, seed: u64, rates: Rates, stall_ms: u64, only: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("faults.log");
        let mut proxy = Command::new(env!("CARGO_BIN_EXE_s3mount-bench"));
        proxy
            .args(["fault-proxy", "--seed", &seed.to_string()])
            .args(["--slowdown", &rates.slowdown.to_string()])
            .args(["--lost", &rates.lost.to_string()])
            .args(["--reset", &rates.reset.to_string()])
            .args(["--stall", &rates.stall.to_string()])
            .args(["--close", &rates.close.to_string()])
            .args(["--stall-ms", &stall_ms.to_string()])
            .args(only)
            .stderr(std::fs::File::create(&log).expect("fault log"));
        let (child, env) = spawn_proxy(proxy, env);
        Self {
            child,
            env,
            log,
            _dir: dir,
        }
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> std::collections::BTreeMap<String, u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut counts = std::collections::BTreeMap::new();
        for kind in text
            .lines()
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("fault=")))
        {
            *counts.entry(kind.to_string()).or_default() += 1;
        }
        counts
    }
}

/// The delay proxy of the benchmark, in front of `env`'s server, adding
/// `delay_ms` to every round trip; killed on drop.
pub struct DelayProxy {
    child: Child,
    pub env: S3Env,
}

impl DelayProxy {
    pub fn new(env: &S3Env, delay_ms: u64) -> Self {
        let mut proxy = Command::new(env!("CARGO_BIN_EXE_s3mount-bench"));
        proxy
            .args(["proxy", "--delay-ms", &delay_ms.to_string()])
            // It says so each time the stopped server refuses it.
            .stderr(Stdio::null());
        let (child, env) = spawn_proxy(proxy, env);
        Self { child, env }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `proxy` (a proxy command of s3mount-bench) in front of `env`'s server:
/// the process, and settings for a client that goes through it.
pub fn spawn_proxy(mut proxy: Command, env: &S3Env) -> (Child, S3Env) {
    let upstream = env.endpoint.trim_start_matches("http://");
    let mut child = proxy
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the proxy");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the proxy's first line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listening="))
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let env = S3Env {
        endpoint: format!("http://{addr}"),
        ..env.clone()
    };
    (child, env)
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
