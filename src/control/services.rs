//! Calls from worker cores to services that live on the control thread: the shared Redis store
//! and the gRPC backend. Cores send without waiting; answers go back through each core's inbox.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use super::Hub;
use super::kafka::KafkaOut;
use super::location::Locations;
use super::redis_idem::RedisIdem;
use super::redis_streams::RedisStreams;
use super::routes::{LiveRoutes, Route};
use super::throttle::Throttle;
use crate::core::inbox::{CoreMsg, Streamed};
use crate::core::services::ServiceCall;
use crate::core::stream::{Stored, StreamAppend, StreamRead};
use bytes::Bytes;

/// The services cores may call; each is present when configured.
#[derive(Clone)]
pub struct Remote {
    pub redis: Option<Arc<RedisIdem>>,
    pub streams: Option<Arc<RedisStreams>>,
    pub routes: Arc<LiveRoutes>,
    pub kafka: Option<Arc<KafkaOut>>,
    /// The location registry, in a cluster.
    pub locations: Option<Arc<Locations>>,
}

/// Serves the cores' calls until every sender is gone. Each batch runs as its own task, so a
/// slow service delays only the batches waiting on it.
pub async fn run(mut calls: mpsc::Receiver<ServiceCall>, node: Arc<Hub>, remote: Remote) {
    let appenders: Vec<_> = match &remote.streams {
        Some(store) => (0..node.cores.len())
            .map(|core| appender(store.clone(), node.clone(), core))
            .collect(),
        None => Vec::new(),
    };
    let reads = Arc::new(Mutex::new(Throttle::new(Duration::from_secs(10))));
    while let Some(call) = calls.recv().await {
        let node = node.clone();
        match call {
            ServiceCall::Streams {
                core,
                appends,
                reads: batch,
            } => {
                if !appends.is_empty() {
                    // The appender lives as long as this loop.
                    let _ = appenders[core].send(appends);
                }
                if !batch.is_empty() {
                    let store = remote
                        .streams
                        .clone()
                        .expect("reads are sent only with --redis");
                    tokio::spawn(read(store, node, core, batch, reads.clone()));
                }
            }
            ServiceCall::Claim { core, reqs } => {
                let redis = remote
                    .redis
                    .clone()
                    .expect("claims are sent only with --redis");
                node.counters.idem_claim_batches.inc();
                node.counters.idem_claims.add(reqs.len() as u64);
                tokio::spawn(async move {
                    let answers = match redis.claim(&reqs).await {
                        Ok(claims) => reqs.into_iter().zip(claims.into_iter().map(Some)).collect(),
                        Err(e) => {
                            node.counters.store_errors.inc();
                            warn!(error = %e, claims = reqs.len(), "redis claim failed; applying the store-down policy");
                            reqs.into_iter().map(|r| (r, None)).collect()
                        }
                    };
                    deliver(&node, core, CoreMsg::Claimed(Box::new(answers))).await;
                });
            }
            ServiceCall::Update(updates) => {
                let redis = remote
                    .redis
                    .clone()
                    .expect("updates are sent only with --redis");
                tokio::spawn(async move {
                    let n = updates.len();
                    if let Err(e) = redis.update(updates).await {
                        // Pending claims then expire after their TTL, and a retry is forwarded.
                        node.counters.store_errors.inc();
                        warn!(error = %e, updates = n, "redis update failed");
                    }
                });
            }
            ServiceCall::Presence { events, at_ms } => {
                if let Some(loc) = &remote.locations {
                    loc.record(events.clone(), at_ms);
                }
                if let Some(kafka) = remote.kafka.clone() {
                    tokio::spawn(async move { kafka.presence(events, at_ms).await });
                }
            }
            ServiceCall::Undelivered(reports) => {
                let reports = node.hold_for_republish(reports);
                if reports.is_empty() {
                    continue;
                }
                let kafka = remote
                    .kafka
                    .clone()
                    .expect("reports are sent only with --kafka");
                tokio::spawn(async move {
                    for u in reports {
                        node.report(&kafka, u).await;
                    }
                });
            }
            ServiceCall::Upstream { core, batch } => {
                let remote = remote.clone();
                tokio::spawn(async move {
                    node.counters.backend_calls.inc();
                    node.counters.backend_messages.add(batch.len() as u64);
                    let routes = remote.routes.get();
                    let results = match routes.get(batch[0].who.biz_id) {
                        Route::Loopback => vec![Ok(Bytes::new()); batch.len()],
                        Route::Grpc(backend) => backend.call(&batch).await,
                        Route::Kafka { topic, batched } => {
                            let kafka = remote.kafka.as_ref().expect("kafka routes need --kafka");
                            kafka.upstream(topic, *batched, &batch).await
                        }
                    };
                    let answers = batch.into_iter().zip(results).collect();
                    deliver(&node, core, CoreMsg::Answered(Box::new(answers))).await;
                });
            }
        }
    }
}

/// Reads the streams of a core's opening links; they may overtake appends (the core holds
/// what it gets meanwhile).
async fn read(
    store: Arc<RedisStreams>,
    node: Arc<Hub>,
    core: usize,
    batch: Vec<StreamRead>,
    log: Arc<Mutex<Throttle>>,
) {
    node.counters.stream_read_batches.inc();
    node.counters.stream_reads.add(batch.len() as u64);
    let answers = match store.read(&batch).await {
        Ok(states) => states.into_iter().map(Result::ok).collect(),
        Err(e) => {
            if let Some(held) = log.lock().expect("log").pass(Instant::now()) {
                warn!(error = %e, reads = batch.len(), since_last = held, "redis stream reads failed; links open with no stream");
            }
            vec![None; batch.len()]
        }
    };
    let reads = batch.iter().map(|r| r.conn).zip(answers).collect();
    let msg = Streamed {
        appends: Vec::new(),
        reads,
    };
    deliver(&node, core, CoreMsg::Streamed(Box::new(msg))).await;
}

/// Appends per pipeline at most: a bigger one would wait behind Redis running every script
/// in it, past the round trip's deadline.
const APPENDS_PER_PIPELINE: usize = 1024;

/// One core's appends, applied in the order the core sent them: a user's pushes are delivered
/// in the order of their offsets, so a pipeline must not overtake the one before it. What
/// queues up while one is out goes in the next, up to [`APPENDS_PER_PIPELINE`] each.
fn appender(
    store: Arc<RedisStreams>,
    node: Arc<Hub>,
    core: usize,
) -> mpsc::UnboundedSender<Vec<StreamAppend>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<StreamAppend>>();
    tokio::spawn(async move {
        let mut log = Throttle::new(Duration::from_secs(10));
        let mut queue: VecDeque<StreamAppend> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match rx.recv().await {
                    Some(batch) => queue.extend(batch),
                    None => return,
                }
            }
            while queue.len() < APPENDS_PER_PIPELINE
                && let Ok(more) = rx.try_recv()
            {
                queue.extend(more);
            }
            let take = queue.len().min(APPENDS_PER_PIPELINE);
            let batch: Vec<StreamAppend> = queue.drain(..take).collect();
            node.counters.stream_append_batches.inc();
            let stored: Vec<Option<Stored>> = match store.append(&batch).await {
                Ok(results) => results.into_iter().map(Result::ok).collect(),
                Err(e) => {
                    if let Some(held) = log.pass(Instant::now()) {
                        warn!(error = %e, appends = batch.len(), since_last = held, "redis stream appends failed; pushes go out unstored");
                    }
                    vec![None; batch.len()]
                }
            };
            let appends = batch.iter().map(|a| a.id).zip(stored).collect();
            let msg = Streamed {
                appends,
                reads: Vec::new(),
            };
            deliver(&node, core, CoreMsg::Streamed(Box::new(msg))).await;
        }
    });
    tx
}

/// Answers must reach the core: they have no sender to refuse (the backend has answered), and
/// a dropped one would leave its messages claimed and unanswered. A full inbox is waited out,
/// however long, as the Kafka path waits; only what has a sender to answer (the push API, an
/// upgrade) is refused at once with 503. The wait is logged every 5 s while it lasts.
async fn deliver(node: &Hub, core: usize, mut msg: CoreMsg) {
    let started = tokio::time::Instant::now();
    loop {
        match node.send_within(core, msg, Duration::from_secs(5)).await {
            Ok(()) => return,
            Err(back) => {
                msg = back;
                warn!(
                    core,
                    waited_s = started.elapsed().as_secs(),
                    "core inbox full: backend answers wait for it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::inbox;

    /// An answer waits out a full inbox past the 5 s after which it used to be dropped, and
    /// reaches the core once the core takes messages again.
    #[tokio::test(start_paused = true)]
    async fn a_backend_answer_waits_out_a_full_inbox_however_long() {
        let (core, inbox) = inbox::channel(1).unwrap();
        let node = Hub::for_tests(vec![core.clone()]);
        assert!(
            core.send(CoreMsg::Shutdown).is_ok(),
            "the inbox is full now"
        );
        let answer = CoreMsg::Answered(Box::default());
        let waiting = tokio::spawn(async move { deliver(&node, 0, answer).await });
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert!(!waiting.is_finished(), "still waiting after 12 s");
        assert!(matches!(inbox.rx.try_recv(), Ok(CoreMsg::Shutdown)));
        waiting.await.unwrap();
        assert!(matches!(inbox.rx.try_recv(), Ok(CoreMsg::Answered(_))));
    }
}
