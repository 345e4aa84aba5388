//! The baseline for ringway's echo benchmark: the WebSocket echo server most Rust users would
//! start from (tokio multi-thread runtime, one task per connection, tokio-tungstenite with
//! default settings), sending every data message back unchanged. It does no auth, no decoding and
//! no bookkeeping, so it bounds what a plain framework costs, not what a gateway does.
//!
//! Usage: echo-baseline [ADDR] (default 127.0.0.1:18090); the worker thread count follows the
//! CPUs the process may use, so `taskset` sets its core budget.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo-baseline listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream));
    }
}
