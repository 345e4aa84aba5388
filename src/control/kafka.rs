//! Kafka: push ingress and the undelivered stream.
//!
//! Pushes (`PushMessage`, protobuf) are consumed in a consumer group. A message's offset is
//! stored for commit only after every receiver's owner core has taken the push (or it was found
//! undecodable); a full core inbox is waited out, never skipped, so a crash or restart re-reads
//! what was not handed off. Auto-commit then commits stored offsets only.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{info, warn};

use super::grpc_backend::to_request;
use super::{NodeState, router};
use crate::auth::Identity;
use crate::backend_proto::BatchOnReceiveRequest;
use crate::core::shard::{BackendError, Undelivered, UpstreamRequest};
use crate::proto::{PresenceEvent, PushMessage, UndeliveredPush};
use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group: String,
    pub push_topic: String,
    pub undelivered_topic: String,
    pub presence_topic: String,
    pub node_id: String,
}

/// The gateway's output streams.
pub struct KafkaOut {
    producer: FutureProducer,
    cfg: KafkaConfig,
}

impl KafkaOut {
    pub fn new(cfg: &KafkaConfig) -> Result<KafkaOut, String> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .create()
            .map_err(|e| format!("--kafka {}: {e}", cfg.brokers))?;
        Ok(KafkaOut {
            producer,
            cfg: cfg.clone(),
        })
    }

    /// Reports one undelivered push, keyed by user so a user's reports stay in order; false if
    /// Kafka did not take it.
    pub async fn report(&self, u: Undelivered) -> bool {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let record = UndeliveredPush {
            biz_id: u.biz_id,
            user_id: u.user_id,
            device_id: u.device_id.unwrap_or_default(),
            key: u.key,
            body: u.body,
            reason: u.reason.label().to_owned(),
            node_id: self.cfg.node_id.clone(),
            at_ms,
        };
        let key = format!("{}:{}", record.biz_id, record.user_id);
        let payload = record.encode_to_vec();
        let send = self.producer.send(
            FutureRecord::to(&self.cfg.undelivered_topic)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(5),
        );
        match send.await {
            Ok(_) => true,
            Err((e, _)) => {
                warn!(error = %e, key = %record.key, "could not write an undelivered report to kafka");
                false
            }
        }
    }
}

impl KafkaOut {
    /// Upstream messages of a biz routed to Kafka: one `OnReceiveRequest` record per message
    /// (keyed by user, so a user's messages stay in order), or one `BatchOnReceiveRequest`
    /// record per batch. A message is acked once the broker confirms its record.
    pub async fn upstream(
        &self,
        topic: &str,
        batched: bool,
        batch: &[UpstreamRequest],
    ) -> Vec<Result<Bytes, BackendError>> {
        let timeout = Duration::from_secs(5);
        let failed = |e: KafkaError| Err(BackendError::Unavailable(format!("kafka: {e}")));
        if batched {
            let record = BatchOnReceiveRequest {
                biz_id: batch[0].who.biz_id,
                requests: batch
                    .iter()
                    .map(|r| to_request(r, &self.cfg.node_id))
                    .collect(),
            };
            let key = record.biz_id.to_string();
            let payload = record.encode_to_vec();
            let sent = self
                .producer
                .send(FutureRecord::to(topic).key(&key).payload(&payload), timeout)
                .await;
            let one = sent.map(|_| Bytes::new()).or_else(|(e, _)| failed(e));
            return vec![one; batch.len()];
        }
        // Enqueue every record first (the producer batches them on the wire), then wait for
        // the delivery reports in order.
        let queued: Vec<_> = batch
            .iter()
            .map(|r| {
                let key = format!("{}:{}", r.who.biz_id, r.who.user_id);
                let payload = to_request(r, &self.cfg.node_id).encode_to_vec();
                let record = FutureRecord::to(topic).key(&key).payload(&payload);
                self.producer.send_result(record).map_err(|(e, _)| e)
            })
            .collect();
        let mut results = Vec::with_capacity(batch.len());
        for q in queued {
            results.push(match q {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(Bytes::new()),
                    Ok(Err((e, _))) => failed(e),
                    Err(_) => Err(BackendError::Unavailable("kafka producer closed".into())),
                },
                Err(e) => failed(e),
            });
        }
        results
    }
}

impl KafkaOut {
    /// Writes presence events, enqueued in order (keyed by user, so they stay in order).
    pub async fn presence(&self, events: Vec<(Arc<Identity>, bool)>, at_ms: u64) {
        let queued: Vec<_> = events
            .iter()
            .map(|(who, online)| {
                let event = PresenceEvent {
                    biz_id: who.biz_id,
                    user_id: who.user_id.clone(),
                    device_id: who.device_id.clone(),
                    node_id: self.cfg.node_id.clone(),
                    online: *online,
                    at_ms,
                };
                let key = format!("{}:{}", who.biz_id, who.user_id);
                let payload = event.encode_to_vec();
                let record = FutureRecord::to(&self.cfg.presence_topic)
                    .key(&key)
                    .payload(&payload);
                self.producer.send_result(record).map_err(|(e, _)| e)
            })
            .collect();
        for q in queued {
            let delivered = match q {
                Ok(d) => matches!(d.await, Ok(Ok(_))),
                Err(_) => false,
            };
            if !delivered {
                warn!("a presence event was not written to kafka");
            }
        }
    }
}

/// Consumes pushes until the node starts draining, then commits what was handed off.
pub async fn consume_pushes(node: Arc<NodeState>, cfg: KafkaConfig) -> Result<(), String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "30000")
        .create()
        .map_err(|e| format!("--kafka {}: {e}", cfg.brokers))?;
    consumer
        .subscribe(&[&cfg.push_topic])
        .map_err(|e| format!("subscribing to {}: {e}", cfg.push_topic))?;
    info!(topic = %cfg.push_topic, group = %cfg.group, "consuming pushes");
    while !node.draining.load(Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                warn!(error = %e, "kafka consume error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Ok(m)) => m,
        };
        match PushMessage::decode(msg.payload().unwrap_or_default()) {
            Ok(push) => hand_off(&node, push).await,
            Err(e) => {
                // Retrying cannot fix it: count it, say where it is, move on.
                node.counters.kafka_bad_pushes.inc();
                warn!(error = %e, partition = msg.partition(), offset = msg.offset(), "undecodable push skipped");
            }
        }
        if let Err(e) = consumer.store_offset_from_message(&msg) {
            warn!(error = %e, "could not store a push offset");
        }
    }
    // Draining: what was handed off is committed now, not at the next interval.
    match consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing new was handed off since the last automatic commit.
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => warn!(error = %e, "final push offset commit failed"),
    }
    Ok(())
}

/// Gives the push to its receivers' owner cores, waiting while a core's inbox is full.
async fn hand_off(node: &NodeState, push: PushMessage) {
    let mut users = push.user_ids;
    if !push.user_id.is_empty() {
        users.push(push.user_id);
    }
    let device = (!push.device_id.is_empty()).then_some(push.device_id);
    node.counters.kafka_pushes.inc();
    let mut wait = Duration::from_millis(1);
    while !users.is_empty() {
        let routed = router::push(
            node,
            push.biz_id,
            users,
            device.clone(),
            &push.key,
            &push.body,
        );
        users = routed.rejected;
        if !users.is_empty() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
    }
}
