//! The delay proxy: a TCP proxy that holds every chunk it forwards for half the
//! round trip, in each direction, so that a request through it costs one round trip
//! more, as against a remote S3 region.
//!
//! Each direction of a connection is a reader and a writer joined by a bounded
//! channel of (deadline, chunk): the reader stamps each chunk with the time it was
//! read plus the delay, the writer sleeps until that deadline and writes it. The
//! delays overlap (a chunk's delay starts when it arrives), so a stream's throughput
//! is not divided by the delay. What one direction holds is bounded by the channel
//! and by a budget of bytes. At the end of a stream (EOF), once every chunk before
//! it has been written, the proxy closes the write half of the other side; an error
//! on either direction closes the whole connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

/// The largest read, so the largest chunk.
const CHUNK: usize = 64 << 10;
/// Chunks one direction may hold.
const CHUNKS_HELD: usize = 1024;
/// Bytes one direction may hold (8 MiB: 800 MB/s for a 20 ms round trip).
const BYTES_HELD: usize = 8 << 20;

/// A chunk with the time it may be written and its share of the byte budget.
type Held = (Instant, Bytes, OwnedSemaphorePermit);

/// Accept connections on `listen` and forward each to `upstream`, forever. Prints
/// `listening=ADDR` once the socket is bound.
pub async fn run(listen: SocketAddr, upstream: SocketAddr, delay: Duration) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "listening={bound} upstream={upstream} delay_ms={}",
        delay.as_millis()
    );
    let half = delay / 2;
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = serve(client, upstream, half).await {
                        eprintln!("s3mount-bench proxy: {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                eprintln!("s3mount-bench proxy: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, half: Duration) -> Result<(), String> {
    let server = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("cannot connect to {upstream}: {e}"))?;
    for s in [&client, &server] {
        s.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(direction(client_read, server_write, half));
    let down = tokio::spawn(direction(server_read, client_write, half));
    let (stop_up, stop_down) = (up.abort_handle(), down.abort_handle());
    // An error in one direction ends the other (dropping its halves closes the
    // sockets), which then reports nothing of its own.
    let up = async {
        let r = finished(up.await);
        if r.is_err() {
            stop_down.abort();
        }
        r.map_err(|e| format!("client to server: {e}"))
    };
    let down = async {
        let r = finished(down.await);
        if r.is_err() {
            stop_up.abort();
        }
        r.map_err(|e| format!("server to client: {e}"))
    };
    let (up, down) = tokio::join!(up, down);
    up.and(down)
}

/// A direction's result; one cancelled (by the other's error) counts as done.
fn finished(r: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(format!("the task failed: {e}")),
    }
}

/// Forward `from` to `to`, each chunk `half` after it was read; at EOF close `to`.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    half: Duration,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel::<Held>(CHUNKS_HELD);
    let budget = Arc::new(Semaphore::new(BYTES_HELD));
    let reader = async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            let n = from
                .read_buf(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                // EOF: dropping the sender lets the writer finish and close.
                return Ok::<_, String>(());
            }
            let arrived = Instant::now();
            let chunk = buf.split().freeze();
            let permits = u32::try_from(chunk.len()).map_err(|e| e.to_string())?;
            let Ok(permit) = budget.clone().acquire_many_owned(permits).await else {
                return Ok(());
            };
            if tx.send((arrived + half, chunk, permit)).await.is_err() {
                // The writer stopped on an error; it reports it.
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((deadline, chunk, permit)) = rx.recv().await {
            tokio::time::sleep_until(deadline).await;
            to.write_all(&chunk)
                .await
                .map_err(|e| format!("write: {e}"))?;
            drop(permit);
        }
        to.shutdown().await.map_err(|e| format!("shutdown: {e}"))
    };
    tokio::pin!(reader, writer);
    tokio::select! {
        // Read to the end: the writer still has to write what it holds, then close.
        read = &mut reader => {
            read?;
            writer.await
        }
        // The writer ends first only on an error (a reader still reading keeps the
        // channel open): the reader has nowhere to send to.
        write = &mut writer => write,
    }
}
