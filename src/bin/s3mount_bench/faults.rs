//! The fault proxy: an HTTP proxy between a client and an S3 server that fails
//! a share of the requests in the ways a real network and a busy server do, so
//! that the tests can show none of them reaches a program on the mount.
//!
//! Each request draws, from one seeded generator, whether it meets a fault (with
//! the sum of the rates as chance); the faults met go round the kinds with a
//! rate above zero in turn, so that a run that injects a few meets every kind:
//! - `slowdown`: answer 503 SlowDown without forwarding;
//! - `lost`: forward, let the server act, then answer 500 (its answer is lost);
//! - `reset`: forward, then break the connection part-way through the answer's
//!   body (right after its headers when it has none);
//! - `stall`: forward, then hold the answer (its headers, or the rest of its
//!   body) for `stall_for` before going on;
//! - `close`: answer, then close the connection while it idles in the client's
//!   pool, as servers and load balancers do with keep-alive connections.
//!
//! A [`Target`] narrows the faults to some requests (a method, a query
//! parameter, a header) and to a number of them, for a test of one case: the
//! answer of the first CompleteMultipartUpload lost, say.
//!
//! Every fault is one line on stderr (`fault=KIND method=M path=P`), so that a
//! run can count them by kind. [`Wire`] adds a line per request with the headers
//! that say how its body is guarded, and can refuse checksums as a server
//! without them does. The draw order follows the order requests
//! arrive, so a seed gives the same rates, not the same requests, run to run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, Error>;

/// The share of requests (0 to 1) that meets each fault.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub slowdown: f64,
    pub lost: f64,
    pub reset: f64,
    pub stall: f64,
    pub close: f64,
}

/// Which requests may meet a fault; `None` places no condition.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub method: Option<String>,
    /// A query parameter the request has (`uploadId`, `uploads`, `partNumber`).
    pub query: Option<String>,
    /// A header the request has (`x-amz-copy-source`).
    pub header: Option<String>,
    /// Faults injected at most.
    pub max: Option<usize>,
}

impl Target {
    fn matches<B>(&self, request: &Request<B>) -> bool {
        let query = request.uri().query().unwrap_or("");
        self.method
            .as_ref()
            .is_none_or(|m| request.method().as_str().eq_ignore_ascii_case(m))
            && self.query.as_ref().is_none_or(|q| {
                query
                    .split('&')
                    .any(|pair| pair.split('=').next() == Some(q.as_str()))
            })
            && self
                .header
                .as_ref()
                .is_none_or(|h| request.headers().contains_key(h.as_str()))
    }
}

/// What the proxy does besides faults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wire {
    /// One line per request on stderr: `request method=M path=P query=Q`,
    /// then its `x-amz-content-sha256`, checksum and copy-source headers.
    pub log_requests: bool,
    /// Answer 400 InvalidArgument, without forwarding, to a request that
    /// carries a checksum header.
    pub refuse_checksums: bool,
}

/// The headers that say how a request's body is guarded, and whether it has
/// one (a copy has none).
const LOGGED_HEADERS: [&str; 5] = [
    "x-amz-content-sha256",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-algorithm",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-copy-source",
];

fn has_checksum<B>(request: &Request<B>) -> bool {
    request.headers().keys().any(|name| {
        name.as_str().starts_with("x-amz-checksum-") || name == "x-amz-sdk-checksum-algorithm"
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Slowdown,
    Lost,
    Reset,
    Stall,
    Close,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Slowdown => "slowdown",
            Fault::Lost => "lost",
            Fault::Reset => "reset",
            Fault::Stall => "stall",
            Fault::Close => "close",
        }
    }
}

struct Proxy {
    upstream: SocketAddr,
    client: Client<HttpConnector, Incoming>,
    rates: Rates,
    target: Target,
    stall_for: Duration,
    wire: Wire,
    draws: Mutex<Draws>,
}

struct Draws {
    rng: fastrand::Rng,
    /// Faults injected so far: the next kind is the one after the last.
    injected: usize,
}

impl Proxy {
    fn draw<B>(&self, request: &Request<B>) -> Option<Fault> {
        if !self.target.matches(request) {
            return None;
        }
        let r = self.rates;
        let kinds: Vec<Fault> = [
            (r.slowdown, Fault::Slowdown),
            (r.lost, Fault::Lost),
            (r.reset, Fault::Reset),
            (r.stall, Fault::Stall),
            (r.close, Fault::Close),
        ]
        .into_iter()
        .filter(|(rate, _)| *rate > 0.0)
        .map(|(_, fault)| fault)
        .collect();
        let share = r.slowdown + r.lost + r.reset + r.stall + r.close;
        let mut draws = self.draws.lock().unwrap_or_else(|e| e.into_inner());
        if kinds.is_empty()
            || self.target.max.is_some_and(|max| draws.injected >= max)
            || draws.rng.f64() >= share
        {
            return None;
        }
        let fault = kinds[draws.injected % kinds.len()];
        draws.injected += 1;
        Some(fault)
    }

    /// Answer `request`, meeting `fault` on the way; `idle_close` is told once
    /// the answer is out when the connection is to be closed after it.
    async fn answer(
        &self,
        mut request: Request<Incoming>,
        idle_close: Arc<Notify>,
    ) -> Result<Response<Body>, Error> {
        if self.wire.log_requests {
            let mut line = format!(
                "request method={} path={} query={}",
                request.method(),
                request.uri().path(),
                request.uri().query().unwrap_or("")
            );
            for name in LOGGED_HEADERS {
                if let Some(value) = request.headers().get(name) {
                    let value = value.to_str().unwrap_or("?");
                    line.push_str(&format!(" {name}={value}"));
                }
            }
            eprintln!("{line}");
        }
        if self.wire.refuse_checksums && has_checksum(&request) {
            return Ok(s3_error(StatusCode::BAD_REQUEST, "InvalidArgument"));
        }
        let fault = self.draw(&request);
        if let Some(fault) = fault {
            eprintln!(
                "fault={} method={} path={}",
                fault.name(),
                request.method(),
                request.uri().path()
            );
        }
        if fault == Some(Fault::Slowdown) {
            return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"));
        }
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *request.uri_mut() = format!("http://{}{path}", self.upstream).parse()?;
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        match fault {
            Some(Fault::Lost) => {
                // The server acted; its answer goes nowhere.
                body.collect().await?;
                Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"))
            }
            Some(Fault::Reset) => {
                let body = break_after_first_frame(body);
                Ok(Response::from_parts(parts, body))
            }
            Some(Fault::Stall) => {
                tokio::time::sleep(self.stall_for).await;
                Ok(Response::from_parts(
                    parts,
                    body.map_err(Error::from).boxed(),
                ))
            }
            Some(Fault::Close) => {
                let body = then(body, move || idle_close.notify_one());
                Ok(Response::from_parts(parts, body))
            }
            Some(Fault::Slowdown) | None => Ok(Response::from_parts(
                parts,
                body.map_err(Error::from).boxed(),
            )),
        }
    }
}

/// An S3 error answer with `code`.
fn s3_error(status: StatusCode, code: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the fault proxy</Message></Error>"
    );
    let mut response = Response::new(Full::new(Bytes::from(xml)).map_err(Error::from).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/xml"));
    response
}

/// `body`'s first frame, then an error: the connection breaks with the answer
/// half sent.
fn break_after_first_frame(body: Incoming) -> Body {
    let frames = body
        .into_data_stream()
        .take(1)
        .map(|r| r.map(Frame::data).map_err(Error::from));
    let broken = futures::stream::once(async {
        Err::<Frame<Bytes>, Error>("connection reset by the fault proxy".into())
    });
    BodyExt::boxed(StreamBody::new(frames.chain(broken)))
}

/// `body`, then `done()` once its last frame has gone.
fn then(body: Incoming, done: impl FnOnce() + Send + Sync + 'static) -> Body {
    let frames = body
        .into_data_stream()
        .map(|r| r.map(Frame::data).map_err(Error::from));
    let mut done = Some(done);
    let end = futures::stream::poll_fn(move |_| {
        if let Some(done) = done.take() {
            done();
        }
        std::task::Poll::Ready(None::<Result<Frame<Bytes>, Error>>)
    });
    BodyExt::boxed(StreamBody::new(frames.chain(end)))
}

/// Accept connections on `listen` and proxy their requests to `upstream`,
/// forever. Prints `listening=ADDR` once the socket is bound.
pub async fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    seed: u64,
    rates: Rates,
    target: Target,
    stall_for: Duration,
    wire: Wire,
) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening={bound} upstream={upstream} seed={seed} {rates:?} {target:?}");
    let proxy = Arc::new(Proxy {
        upstream,
        client: Client::builder(TokioExecutor::new()).build_http(),
        rates,
        target,
        stall_for,
        wire,
        draws: Mutex::new(Draws {
            rng: fastrand::Rng::with_seed(seed),
            injected: 0,
        }),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("s3mount-bench fault-proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let idle_close = Arc::new(Notify::new());
            let service = {
                let idle_close = idle_close.clone();
                service_fn(move |request| {
                    let (proxy, idle_close) = (proxy.clone(), idle_close.clone());
                    async move {
                        Ok::<_, Infallible>(match proxy.answer(request, idle_close).await {
                            Ok(response) => response,
                            // The server could not be reached: what a gateway says.
                            Err(e) => {
                                eprintln!("s3mount-bench fault-proxy: upstream: {e}");
                                s3_error(StatusCode::BAD_GATEWAY, "BadGateway")
                            }
                        })
                    }
                })
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = idle_close.notified() => {}
            }
            // The answer is out: the connection closes once idle, without
            // telling the client first.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
}
