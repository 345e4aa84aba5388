//! The business backend over gRPC (tonic): `OnReceive` for a single message, `BatchOnReceive`
//! for a core's per-biz batch. Each call has a deadline; retryable failures are retried with
//! jittered exponential backoff; a circuit breaker fails calls at once while the backend is down.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::warn;

use super::breaker::Breaker;
use crate::backend_proto::backend_service_client::BackendServiceClient;
use crate::backend_proto::{BatchOnReceiveRequest, OnReceiveRequest, batch_result};
use crate::core::shard::{BackendError, UpstreamRequest};
use crate::link::retry::RetryPolicy;

#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// `grpc://host:port` (plaintext HTTP/2).
    pub endpoint: String,
    pub node_id: String,
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub attempts: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

pub struct GrpcBackend {
    client: BackendServiceClient<Channel>,
    node_id: String,
    timeout: Duration,
    retry: RetryPolicy,
    breaker: Mutex<Breaker>,
}

/// Failures worth another try: the backend may answer if asked again.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
    )
}

/// What a final gRPC error means to the client.
fn classify(status: &Status) -> BackendError {
    let reason = format!("backend: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange => BackendError::Rejected(reason),
        _ => BackendError::Unavailable(reason),
    }
}

impl GrpcBackend {
    /// Its circuit is open (or half open, letting one probe through): calls fail at once.
    pub fn breaker_open(&self) -> bool {
        self.breaker.lock().expect("breaker lock").is_open()
    }

    pub fn new(cfg: &GrpcConfig) -> Result<GrpcBackend, String> {
        let uri = match cfg.endpoint.strip_prefix("grpc://") {
            Some(rest) => format!("http://{rest}"),
            None => {
                return Err(format!(
                    "--backend {}: expected grpc://host:port",
                    cfg.endpoint
                ));
            }
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| format!("--backend {}: {e}", cfg.endpoint))?
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(GrpcBackend {
            client: BackendServiceClient::new(channel),
            node_id: cfg.node_id.clone(),
            timeout: cfg.timeout,
            retry: RetryPolicy {
                initial: Duration::from_millis(50),
                max_attempts: cfg.attempts.max(1),
                max_delay: Duration::from_secs(1),
                jitter: 0.2,
            },
            breaker: Mutex::new(Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown)),
        })
    }

    /// One result per message, in order.
    pub async fn call(&self, batch: &[UpstreamRequest]) -> Vec<Result<Bytes, BackendError>> {
        let all = |e: BackendError| vec![Err(e); batch.len()];
        let mut attempt = 1;
        loop {
            if !self
                .breaker
                .lock()
                .expect("breaker lock")
                .allow(Instant::now())
            {
                return all(BackendError::Unavailable(
                    "backend unavailable (circuit open)".into(),
                ));
            }
            let outcome = tokio::time::timeout(self.timeout, self.once(batch))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("backend call timed out")));
            match outcome {
                Ok(results) => {
                    self.breaker.lock().expect("breaker lock").on_success();
                    return results;
                }
                Err(status) if retryable(status.code()) => {
                    self.breaker
                        .lock()
                        .expect("breaker lock")
                        .on_failure(Instant::now());
                    if attempt >= self.retry.max_attempts {
                        warn!(code = ?status.code(), messages = batch.len(), "backend call failed after retries");
                        return all(classify(&status));
                    }
                    tokio::time::sleep(self.retry.delay(attempt, rand_unit())).await;
                    attempt += 1;
                }
                // The backend answered (with a final error): it is up.
                Err(status) => {
                    self.breaker.lock().expect("breaker lock").on_success();
                    return all(classify(&status));
                }
            }
        }
    }

    async fn once(
        &self,
        batch: &[UpstreamRequest],
    ) -> Result<Vec<Result<Bytes, BackendError>>, Status> {
        let mut client = self.client.clone();
        if let [one] = batch {
            let reply = client.on_receive(self.request(one)).await?.into_inner();
            return Ok(vec![Ok(reply.body)]);
        }
        let req = BatchOnReceiveRequest {
            biz_id: batch[0].who.biz_id,
            requests: batch.iter().map(|r| self.request(r)).collect(),
        };
        let resp = client.batch_on_receive(req).await?.into_inner();
        if resp.results.len() != batch.len() {
            // A malformed answer fails this batch's messages only, and says why.
            let why = format!(
                "backend answered {} results for {} messages",
                resp.results.len(),
                batch.len()
            );
            warn!("{why}");
            return Ok(vec![Err(BackendError::Unavailable(why)); batch.len()]);
        }
        Ok(resp
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(batch_result::Result::Ok(ok)) => Ok(ok.body),
                Some(batch_result::Result::Rejected(why)) => Err(BackendError::Rejected(why)),
                None => Err(BackendError::Unavailable(
                    "backend sent an empty result".into(),
                )),
            })
            .collect())
    }

    fn request(&self, r: &UpstreamRequest) -> OnReceiveRequest {
        to_request(r, &self.node_id)
    }
}

/// The backend's view of an upstream message: who sent it, from where, and when.
pub fn to_request(r: &UpstreamRequest, node_id: &str) -> OnReceiveRequest {
    let age = r.received_at.elapsed();
    let received_at_ms = SystemTime::now()
        .checked_sub(age)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    OnReceiveRequest {
        biz_id: r.who.biz_id,
        user_id: r.who.user_id.to_string(),
        device_id: r.who.device_id.to_string(),
        link_id: format!("{}:{}:{}", r.who.biz_id, r.who.user_id, r.who.device_id),
        node_id: node_id.to_owned(),
        key: r.key.to_string(),
        body: r.body.clone(),
        received_at_ms,
    }
}

fn rand_unit() -> f64 {
    use rand::{Rng, SeedableRng};
    rand::rngs::SmallRng::from_os_rng().random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_codes_are_retried_and_final_ones_classified() {
        assert!(retryable(Code::Unavailable) && retryable(Code::DeadlineExceeded));
        assert!(!retryable(Code::InvalidArgument) && !retryable(Code::Internal));
        assert!(matches!(
            classify(&Status::invalid_argument("x")),
            BackendError::Rejected(_)
        ));
        assert!(matches!(
            classify(&Status::internal("x")),
            BackendError::Unavailable(_)
        ));
    }
}
