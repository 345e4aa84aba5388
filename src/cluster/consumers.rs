//! The node's Kafka consumers: the push topic (shared by the fleet, or per node in broadcast
//! routing), the node's own topic (pushes other nodes routed here, in located routing) and the
//! scale events.

use std::sync::Arc;

use tracing::warn;

use super::orphans::adopt_orphans;
use super::rebalance::{ScaleEvent, on_scale_event};
use super::routing::{Mode, PushRouter, hand_off, push_topic_share, uncommitted};
use crate::control::Hub;
use crate::control::kafka::{self, KafkaConfig, KafkaOut, Membership, Record, Subscription};
use crate::proto::RoomMessage;
use prost::Message as _;

/// Starts the consumers `mode` needs, once the topics they read exist.
pub async fn start(
    node: &Arc<Hub>,
    cfg: &KafkaConfig,
    out: Arc<KafkaOut>,
    mode: Mode,
    scale_topic: Option<String>,
    started_ms: u64,
) -> Result<(), String> {
    let located = matches!(mode, Mode::Located(_));
    let broadcast = matches!(mode, Mode::Broadcast(_));
    let clustered = located || broadcast;
    let node_topic = out.node_topic(&node.node_id);
    if clustered {
        let mut topics = vec![node_topic.clone()];
        topics.extend(scale_topic.clone());
        // The node's own topic must exist before other nodes route pushes to it.
        let give_up = std::time::Duration::from_secs(60);
        kafka::ensure_topics_retrying(&cfg.brokers, &topics, Some(give_up)).await?;
    }
    let router = Arc::new(PushRouter {
        node: node.clone(),
        kafka: out,
        mode,
    });
    let push_sub = Subscription {
        topic: cfg.push_topic.clone(),
        group: if broadcast {
            format!("{}.{}", cfg.group, node.node_id)
        } else {
            cfg.group.clone()
        },
        membership: if located {
            push_topic_share(node.clone())
        } else if broadcast {
            Membership::All
        } else {
            Membership::Group
        },
        fetch_wait_ms: cfg.latency.fetch_wait_ms,
        uncommitted: uncommitted(node),
        from_newest: false,
    };
    consume_push_topic(node, &cfg.brokers, push_sub, router.clone());
    consume_room_topic(node, cfg);
    if located {
        tokio::spawn(adopt_orphans(
            router.clone(),
            cfg.brokers.clone(),
            cfg.group.clone(),
        ));
        consume_node_topic(node, cfg, node_topic);
    }
    if let (true, Some(topic)) = (clustered, scale_topic) {
        consume_scale_events(node, cfg, topic, started_ms);
    }
    Ok(())
}

/// Reads the push topic, routing each push ([`PushRouter::route`]) until the node drains.
fn consume_push_topic(node: &Arc<Hub>, brokers: &str, sub: Subscription, router: Arc<PushRouter>) {
    let (n, brokers) = (node.clone(), brokers.to_owned());
    tokio::spawn(async move {
        let handle = |records: Vec<Record>| {
            let (n, router) = (n.clone(), router.clone());
            async move {
                let pushes = records
                    .into_iter()
                    .filter_map(|(bytes, u)| Some((kafka::decode_push(&n, &bytes)?, u)))
                    .collect();
                router.route(pushes).await;
            }
        };
        if let Err(e) = kafka::consume(&brokers, &sub, || !n.is_draining(), handle).await {
            tracing::error!(error = %e, "push consumer stopped");
        }
    });
}

/// Reads the room topic, all of it, in a group of this node's own: every node hands every room
/// message and broadcast to all its cores, which deliver to their members. A record is
/// committed once the cores have it (best effort has nothing to wait for after that). The
/// topic is made here, beside the start rather than in its way: a broker slow to create
/// topics must not hold the node's readiness.
fn consume_room_topic(node: &Arc<Hub>, cfg: &KafkaConfig) {
    let sub = Subscription {
        topic: cfg.room_topic.clone(),
        group: format!("{}.rooms.{}", cfg.group, node.node_id),
        membership: Membership::All,
        fetch_wait_ms: cfg.latency.fetch_wait_ms,
        uncommitted: uncommitted(node),
        from_newest: true,
    };
    let (n, brokers) = (node.clone(), cfg.brokers.clone());
    tokio::spawn(async move {
        let topic = std::slice::from_ref(&sub.topic);
        let _ = kafka::ensure_topics_retrying(&brokers, topic, None).await;
        let handle = |records: Vec<Record>| {
            let n = n.clone();
            async move {
                for (bytes, _) in records {
                    match RoomMessage::decode(&bytes[..]) {
                        Ok(m) => crate::control::router::room(&n, m).await,
                        Err(e) => warn!(error = %e, "undecodable room message skipped"),
                    }
                }
            }
        };
        if let Err(e) = kafka::consume(&brokers, &sub, || !n.is_draining(), handle).await {
            tracing::error!(error = %e, "room consumer stopped");
        }
    });
}

/// Reads the node's own topic: pushes other nodes forwarded to users they found here. The
/// drain stops it last ([`Hub::finish_node_topic`]).
fn consume_node_topic(node: &Arc<Hub>, cfg: &KafkaConfig, node_topic: String) {
    node.node_topic_started();
    let sub = Subscription {
        topic: node_topic,
        group: format!("{}.node.{}", cfg.group, node.node_id),
        membership: Membership::All,
        fetch_wait_ms: cfg.latency.fetch_wait_ms,
        uncommitted: uncommitted(node),
        from_newest: false,
    };
    let (n, brokers) = (node.clone(), cfg.brokers.clone());
    tokio::spawn(async move {
        let handle = |records: Vec<Record>| {
            let n = n.clone();
            async move {
                for (bytes, unsettled) in records {
                    let Some(push) = kafka::decode_push(&n, &bytes) else {
                        continue;
                    };
                    let mut users = push.user_ids.clone();
                    if !push.user_id.is_empty() {
                        users.push(push.user_id.clone());
                    }
                    hand_off(&n, &push, users, true, &unsettled).await;
                }
            }
        };
        if let Err(e) =
            kafka::consume(&brokers, &sub, || n.node_topic_keep_consuming(), handle).await
        {
            tracing::error!(error = %e, "node-topic consumer stopped");
        }
        n.node_topic_finished();
    });
}

/// A group per process start, reading from the start but acting only on events newer than the
/// process: a restarted node must not act on scale-ups it slept through, and one published
/// while this consumer was still joining must not be missed.
fn consume_scale_events(node: &Arc<Hub>, cfg: &KafkaConfig, topic: String, started_ms: u64) {
    let sub = Subscription {
        topic,
        group: format!("{}.scale.{}.{started_ms}", cfg.group, node.node_id),
        membership: Membership::Group,
        fetch_wait_ms: cfg.latency.fetch_wait_ms,
        uncommitted: uncommitted(node),
        from_newest: false,
    };
    let (n, brokers) = (node.clone(), cfg.brokers.clone());
    tokio::spawn(async move {
        let handle = |records: Vec<Record>| {
            for (bytes, _) in records {
                match serde_json::from_slice::<ScaleEvent>(&bytes) {
                    Ok(ev) if ev.at_ms < started_ms => {}
                    Ok(ev) => {
                        tokio::spawn(on_scale_event(n.clone(), ev));
                    }
                    Err(e) => warn!(error = %e, "ignoring a scale event that is not JSON"),
                }
            }
            std::future::ready(())
        };
        if let Err(e) = kafka::consume(&brokers, &sub, || !n.is_draining(), handle).await {
            tracing::error!(error = %e, "scale-event consumer stopped");
        }
    });
}
