//! CloudFront for the tests: a distribution of its own on the local CloudFront API
//! (moto, which `scripts/test.sh` starts and names in CLOUDFRONT_ENDPOINT), the
//! invalidations it recorded, and a proxy in front of it that can play dead.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_cloudfront::Client;
use aws_sdk_cloudfront::types::{
    DefaultCacheBehavior, DistributionConfig, Origin, Origins, S3OriginConfig, TrustedSigners,
    ViewerProtocolPolicy,
};

/// The local CloudFront API.
pub fn endpoint() -> String {
    std::env::var("CLOUDFRONT_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CLOUDFRONT_ENDPOINT is not set: run the tests with scripts/test.sh, which starts it"
        )
    })
}

/// A distribution of one test.
pub struct Distribution {
    pub id: String,
    pub endpoint: String,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl Distribution {
    pub fn new(origin_bucket: &str) -> Self {
        let endpoint = endpoint();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let creds =
            aws_sdk_cloudfront::config::Credentials::new("test", "test", None, None, "test");
        let config = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .credentials_provider(creds)
                .endpoint_url(&endpoint)
                .load(),
        );
        let client = Client::new(&config);
        let origin = Origin::builder()
            .id("s3")
            .domain_name(format!("{origin_bucket}.s3.amazonaws.com"))
            .s3_origin_config(S3OriginConfig::builder().origin_access_identity("").build())
            .build()
            .expect("origin");
        let behaviour = DefaultCacheBehavior::builder()
            .target_origin_id("s3")
            .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
            // AWS's managed policy "CachingOptimized".
            .cache_policy_id("658327ea-f89d-4fab-a63d-7e88639e58f6")
            .trusted_signers(
                TrustedSigners::builder()
                    .enabled(false)
                    .quantity(0)
                    .build()
                    .expect("signers"),
            )
            .build()
            .expect("behaviour");
        let config = DistributionConfig::builder()
            .caller_reference(format!("{origin_bucket}-{}", std::process::id()))
            .origins(
                Origins::builder()
                    .quantity(1)
                    .items(origin)
                    .build()
                    .expect("origins"),
            )
            .default_cache_behavior(behaviour)
            .comment("s3mount test")
            .enabled(true)
            .build()
            .expect("distribution config");
        let out = rt
            .block_on(
                client
                    .create_distribution()
                    .distribution_config(config)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("create distribution: {e:?}"));
        let id = out.distribution().expect("distribution").id().to_string();
        Self {
            id,
            endpoint,
            client,
            rt,
        }
    }

    /// The options that make a mount invalidate in this distribution, through
    /// `endpoint` (the API itself, or a proxy of it).
    pub fn mount_args(&self, endpoint: &str) -> Vec<String> {
        vec![
            "--cloudfront-distribution-id".into(),
            self.id.clone(),
            "--cloudfront-endpoint-url".into(),
            endpoint.into(),
        ]
    }

    /// The paths of each invalidation made, oldest first, each sorted.
    pub fn invalidations(&self) -> Vec<Vec<String>> {
        let list = self
            .rt
            .block_on(
                self.client
                    .list_invalidations()
                    .distribution_id(&self.id)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("list invalidations: {e:?}"));
        let mut made: Vec<(aws_sdk_cloudfront::primitives::DateTime, Vec<String>)> = list
            .invalidation_list()
            .map(|l| l.items())
            .unwrap_or_default()
            .iter()
            .map(|summary| {
                let out = self
                    .rt
                    .block_on(
                        self.client
                            .get_invalidation()
                            .distribution_id(&self.id)
                            .id(summary.id())
                            .send(),
                    )
                    .unwrap_or_else(|e| panic!("get invalidation: {e:?}"));
                let invalidation = out.invalidation().expect("invalidation");
                let mut paths = invalidation
                    .invalidation_batch()
                    .and_then(|b| b.paths())
                    .map(|p| p.items().to_vec())
                    .unwrap_or_default();
                paths.sort();
                (*invalidation.create_time(), paths)
            })
            .collect();
        made.sort_by_key(|(time, _)| time.as_nanos());
        made.into_iter().map(|(_, paths)| paths).collect()
    }

    /// Wait (bounded) until `count` invalidations were made, and return them all.
    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<Vec<String>> {
        let deadline = Instant::now() + limit;
        loop {
            let made = self.invalidations();
            if made.len() >= count {
                return made;
            }
            assert!(
                Instant::now() < deadline,
                "{count} invalidations expected within {limit:?}, got {made:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A TCP proxy in front of an endpoint, that can be switched off: then it accepts
/// connections and never answers, as a CDN that hangs (the worst case for a
/// caller that would wait for it).
pub struct Proxy {
    pub url: String,
    up: Arc<AtomicBool>,
    /// Connections open now: cut when the state changes.
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn new(target: &str) -> Self {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (up2, connections2) = (up.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if let Ok(copy) = client.try_clone() {
                    connections2.lock().unwrap().push(copy);
                }
                if up2.load(Ordering::SeqCst) {
                    forward(client, &target, &connections2);
                }
            }
        });
        Self {
            url,
            up,
            connections,
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn forward(client: TcpStream, target: &str, connections: &Mutex<Vec<TcpStream>>) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    if let Ok(copy) = server.try_clone() {
        connections.lock().unwrap().push(copy);
    }
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
        pipe(client, server);
        pipe(s2, c2);
    }
}
