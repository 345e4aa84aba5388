//! A business backend for tests and load runs: implements `BackendService`, answers
//! `ok:<key>`, and prints one line per call and per message on stdout so a test can audit
//! exactly what reached the backend.
//!
//! `--reject-prefix P` refuses messages whose key starts with P (alone, inside a batch);
//! `--fail CODE` answers every call with a gRPC error (`unavailable`, `invalid-argument`);
//! `--delay-ms N` answers after N ms.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use ringway::backend_proto::backend_service_server::{BackendService, BackendServiceServer};
use ringway::backend_proto::{
    BatchOnReceiveRequest, BatchOnReceiveResponse, BatchResult, OnReceiveRequest,
    OnReceiveResponse, batch_result,
};
use tonic::{Request, Response, Status};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long)]
    reject_prefix: Option<String>,
    #[arg(long)]
    fail: Option<String>,
}

struct TestBackend {
    args: Args,
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl TestBackend {
    async fn before_call(&self, method: &str, biz_id: u64, size: usize) -> Result<(), Status> {
        say(format!("call {method} biz={biz_id} size={size}"));
        if self.args.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.delay_ms)).await;
        }
        match self.args.fail.as_deref() {
            Some("unavailable") => Err(Status::unavailable("test backend told to fail")),
            Some("invalid-argument") => {
                Err(Status::invalid_argument("test backend refuses everything"))
            }
            _ => Ok(()),
        }
    }

    fn handle(&self, m: &OnReceiveRequest) -> Result<OnReceiveResponse, String> {
        say(format!(
            "msg biz={} user={} device={} link={} node={} key={} body_len={} received_at_ms={}",
            m.biz_id,
            m.user_id,
            m.device_id,
            m.link_id,
            m.node_id,
            m.key,
            m.body.len(),
            m.received_at_ms
        ));
        match &self.args.reject_prefix {
            Some(p) if m.key.starts_with(p.as_str()) => Err(format!("key {} refused", m.key)),
            _ => Ok(OnReceiveResponse {
                body: format!("ok:{}", m.key).into_bytes().into(),
            }),
        }
    }
}

#[tonic::async_trait]
impl BackendService for TestBackend {
    async fn on_receive(
        &self,
        req: Request<OnReceiveRequest>,
    ) -> Result<Response<OnReceiveResponse>, Status> {
        let m = req.into_inner();
        self.before_call("OnReceive", m.biz_id, 1).await?;
        self.handle(&m)
            .map(Response::new)
            .map_err(Status::invalid_argument)
    }

    async fn batch_on_receive(
        &self,
        req: Request<BatchOnReceiveRequest>,
    ) -> Result<Response<BatchOnReceiveResponse>, Status> {
        let b = req.into_inner();
        self.before_call("BatchOnReceive", b.biz_id, b.requests.len())
            .await?;
        let results = b
            .requests
            .iter()
            .map(|m| BatchResult {
                result: Some(match self.handle(m) {
                    Ok(ok) => batch_result::Result::Ok(ok),
                    Err(why) => batch_result::Result::Rejected(why),
                }),
            })
            .collect();
        Ok(Response::new(BatchOnReceiveResponse { results }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    say(format!("listening {}", listener.local_addr()?));
    tonic::transport::Server::builder()
        .add_service(BackendServiceServer::new(TestBackend { args }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
