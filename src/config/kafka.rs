//! The Kafka brokers and the topics pushes, reports and presence travel on.

use clap::Args;

use crate::control::kafka::{KafkaConfig, Latency};

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Kafka brokers (host:port,...): consume pushes from --push-topic and write undelivered
    /// reports to --undelivered-topic.
    #[arg(long, env = "RINGWAY_KAFKA")]
    pub kafka: Option<String>,
    /// Longest a Kafka consumer's fetch waits for records (librdkafka fetch.wait.max.ms). A
    /// broker that holds a fetch for its whole wait (Tansu does) adds up to this much to every
    /// Kafka push, so librdkafka's default 500 ms is too slow for chat; but each consumer then
    /// sends up to 1000/this fetches a second while its topic is idle, so raise it for a broker
    /// whose fetches are expensive (one that reads object storage on each).
    #[arg(long, env = "RINGWAY_KAFKA_FETCH_WAIT_MS", default_value_t = 10)]
    pub kafka_fetch_wait_ms: u32,
    /// How long produced records wait to share a batch (librdkafka linger.ms): undelivered
    /// reports, forwards, Kafka upstream routes.
    #[arg(long, env = "RINGWAY_KAFKA_LINGER_MS", default_value_t = 1)]
    pub kafka_linger_ms: u32,
    /// Consumer group of the push consumer.
    #[arg(long, env = "RINGWAY_KAFKA_GROUP", default_value = "ringway")]
    pub kafka_group: String,
    /// Topic of PushMessage records (protobuf) to deliver.
    #[arg(long, env = "RINGWAY_PUSH_TOPIC", default_value = "ringway.push")]
    pub push_topic: String,
    /// Topic of RoomMessage records (room messages and broadcasts): every node reads all of
    /// it (a consumer group per node, from the newest record) and delivers to its members.
    #[arg(long, env = "RINGWAY_ROOM_TOPIC", default_value = "ringway.rooms")]
    pub room_topic: String,
    /// Topic the node writes PresenceEvent records (a device online / offline) to.
    #[arg(
        long,
        env = "RINGWAY_PRESENCE_TOPIC",
        default_value = "ringway.presence"
    )]
    pub presence_topic: String,
    /// Topic the node writes UndeliveredPush records (protobuf, with the body) to.
    #[arg(
        long,
        env = "RINGWAY_UNDELIVERED_TOPIC",
        default_value = "ringway.undelivered"
    )]
    pub undelivered_topic: String,
}

impl KafkaArgs {
    /// The client settings, with `--kafka`.
    pub fn config(&self, node_id: &str) -> Option<KafkaConfig> {
        self.kafka.as_ref().map(|brokers| KafkaConfig {
            brokers: brokers.clone(),
            group: self.kafka_group.clone(),
            push_topic: self.push_topic.clone(),
            room_topic: self.room_topic.clone(),
            undelivered_topic: self.undelivered_topic.clone(),
            presence_topic: self.presence_topic.clone(),
            node_id: node_id.to_owned(),
            latency: Latency {
                fetch_wait_ms: self.kafka_fetch_wait_ms,
                linger_ms: self.kafka_linger_ms,
            },
        })
    }
}
