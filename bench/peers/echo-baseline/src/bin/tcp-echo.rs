//! The physical reference for the echo benchmark: a raw TCP echo server (tokio, one task per
//! connection, each read written straight back). No WebSocket framing at all, so its figure is
//! what loopback TCP alone allows on the same core.
//!
//! Usage: tcp-echo [ADDR] (default 127.0.0.1:18091).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18091".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("tcp-echo listening on {addr}");
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
