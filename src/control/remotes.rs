//! The services a node talks to, each when configured: Redis (the shared idempotency store),
//! Kafka, and the per-biz backend routes. Connecting them is the control side's first act;
//! the cores learn from the result which of their work leaves the core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::grpc_backend::{GrpcBackend, GrpcConfig};
use super::kafka::{KafkaConfig, KafkaOut};
use super::redis_idem::RedisIdem;
use super::redis_rooms::RedisRooms;
use super::redis_streams::RedisStreams;
use super::routes::{LiveRoutes, Target};
use crate::core::embedded::LocalBizs;
use crate::core::stream::StreamLimits;
use crate::link::idem::IdemTtl;

/// What to connect, from the flags.
pub struct RemoteSetup {
    /// `--redis`, with the dedup window it keeps and the deadline of one round trip.
    pub redis: Option<(String, IdemTtl, Duration)>,
    /// The users' streams' limits; with Redis, the streams live there.
    pub streams: StreamLimits,
    /// `--max-rooms-per-user` and how long a stored room set outlives its user's last
    /// connect.
    pub rooms: (usize, Duration),
    pub kafka: Option<KafkaConfig>,
    /// The client settings gRPC routes share (each fills in its endpoint).
    pub grpc: GrpcConfig,
    pub backend: Target,
    pub routes: Vec<(u64, Target)>,
    /// Routes are also watched in etcd, so any biz's backend may change while running.
    pub routes_in_etcd: bool,
}

pub struct Remotes {
    pub redis: Option<Arc<RedisIdem>>,
    /// The users' streams, on the idempotency store's connection.
    pub streams: Option<Arc<RedisStreams>>,
    /// The users' room memberships, on the same connection.
    pub rooms: Option<Arc<RedisRooms>>,
    pub kafka: Option<KafkaConfig>,
    pub kafka_out: Option<Arc<KafkaOut>>,
    pub routes: Arc<LiveRoutes>,
    /// Bizs whose upstream messages the cores answer themselves (the loopback backend).
    pub local_bizs: Arc<LocalBizs>,
}

impl Remotes {
    /// Connects Redis (checked now, so a wrong URL fails the start) and Kafka's producer;
    /// gRPC channels connect lazily inside `rt`.
    pub fn connect(rt: &tokio::runtime::Runtime, setup: RemoteSetup) -> Result<Remotes, String> {
        let began = Instant::now();
        let redis = match setup.redis {
            Some((url, ttl, timeout)) => Some(Arc::new(
                rt.block_on(RedisIdem::connect(&url, ttl, timeout))?,
            )),
            None => None,
        };
        let (max_rooms, rooms_ttl) = setup.rooms;
        let streams = redis
            .as_ref()
            .map(|r| Arc::new(RedisStreams::new(r.redis(), setup.streams, rooms_ttl)));
        let rooms = redis
            .as_ref()
            .map(|r| Arc::new(RedisRooms::new(r.redis(), max_rooms, rooms_ttl)));
        let kafka_out = match &setup.kafka {
            Some(cfg) => Some(Arc::new(KafkaOut::new(cfg)?)),
            None => None,
        };
        let grpc = setup.grpc;
        let (routes, local_bizs) = {
            let _guard = rt.enter();
            LiveRoutes::new(
                setup.backend,
                setup.routes,
                kafka_out.is_some(),
                Box::new(move |url| {
                    GrpcBackend::new(&GrpcConfig {
                        endpoint: url.to_owned(),
                        ..grpc.clone()
                    })
                }),
            )?
        };
        // Routes watched in etcd can change any biz's backend: cores then send every upstream
        // message to the control thread, which applies the live map.
        let local_bizs = Arc::new(if setup.routes_in_etcd {
            LocalBizs::default()
        } else {
            local_bizs
        });
        crate::warn_if_slow("connecting to Redis, Kafka and the backends", began);
        Ok(Remotes {
            redis,
            streams,
            rooms,
            kafka: setup.kafka,
            kafka_out,
            routes: Arc::new(routes),
            local_bizs,
        })
    }

    /// Whether cores send anything to the control thread at all.
    pub fn any(&self) -> bool {
        self.redis.is_some() || !self.local_bizs.all_local() || self.kafka_out.is_some()
    }
}
