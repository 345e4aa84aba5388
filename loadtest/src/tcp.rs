//! The physical reference: the echo scenario over raw TCP, with the same message size, links and
//! pipelining, against a server that writes back what it reads. It shows what the kernel's
//! loopback TCP costs on its own, under any WebSocket server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::Common;
use crate::conn::dial;
use crate::progress::Progress;

/// Opens this process's share of `common.links` raw connections.
pub async fn open_all(common: &Common, progress: &Arc<Progress>) -> Result<Vec<TcpStream>, String> {
    let server: SocketAddr = tokio::net::lookup_host(&common.server)
        .await
        .map_err(|e| format!("resolving {}: {e}", common.server))?
        .next()
        .ok_or("server address resolves to nothing")?;
    let mut links = Vec::new();
    for i in common.my_links() {
        links.push(dial(server, common.sources[i % common.sources.len()]).await?);
        progress.links.fetch_add(1, Relaxed);
    }
    Ok(links)
}

/// Sends `size`-byte messages and reads each back, `pipeline` in flight, until `deadline` or
/// `messages` are answered. As the WebSocket echo does, the messages that refill the window
/// go out in one write, and each read takes whatever has arrived.
pub async fn drive(
    mut s: TcpStream,
    size: usize,
    pipeline: usize,
    messages: u64,
    deadline: Instant,
    hist: Arc<Mutex<Histogram<u64>>>,
    progress: Arc<Progress>,
) {
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let size = size.max(1);
    let msg = vec![b'x'; size];
    let mut out = Vec::with_capacity(size * pipeline);
    let mut back = vec![0u8; (size * pipeline).max(16 * 1024)];
    let mut in_flight = std::collections::VecDeque::new();
    let mut sent = 0u64;
    // Bytes of a message read only in part.
    let mut partial = 0;
    loop {
        out.clear();
        while in_flight.len() < pipeline && sent < messages && Instant::now() < deadline {
            out.extend_from_slice(&msg);
            in_flight.push_back(Instant::now());
            sent += 1;
        }
        if !out.is_empty() && s.write_all(&out).await.is_err() {
            progress.errors.fetch_add(1, Relaxed);
            return;
        }
        if in_flight.is_empty() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut back)).await {
            Ok(Ok(n)) if n > 0 => {
                partial += n;
                while partial >= size {
                    partial -= size;
                    let Some(t) = in_flight.pop_front() else {
                        progress.errors.fetch_add(1, Relaxed);
                        return;
                    };
                    local.saturating_record(t.elapsed().as_micros() as u64);
                    progress.events.fetch_add(1, Relaxed);
                }
            }
            _ => {
                progress.errors.fetch_add(1, Relaxed);
                break;
            }
        }
    }
    let _ = hist.lock().await.add(&local);
}
