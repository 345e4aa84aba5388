//! The core's calls to the control thread: claims for the shared store (Redis), batches for
//! remote backends, idempotency updates, presence and undelivered reports. What the core
//! answers itself (its own store, the loopback backend) the shard does; this side only carries
//! the rest, batched, and answers in the shard's place when the control thread cannot take it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::batcher::{Added, Batcher};
use super::shard::{BackendError, DeviceEvent, Shard, Undelivered, UpstreamRequest};
use super::stream::{StreamAppend, StreamRead};
use super::tally::Tally;
use crate::link::idem::IdemUpdate;

/// What a core asks of the control thread. It is the core's outgoing message, so it is
/// defined here, below the control side that serves it.
pub enum ServiceCall {
    /// Claim these messages' keys and answer core `core` with `CoreMsg::Claimed`.
    Claim {
        core: usize,
        reqs: Vec<UpstreamRequest>,
    },
    /// Store replies / release claims; nothing is answered.
    Update(Vec<IdemUpdate>),
    /// Call the backend with one batch (one biz) and answer with `CoreMsg::Answered`.
    Upstream {
        core: usize,
        batch: Vec<UpstreamRequest>,
    },
    /// Append pushes to and read streams from the shared stream store, and answer core
    /// `core` with `CoreMsg::Streamed`. A core's appends must be applied in the order sent.
    Streams {
        core: usize,
        appends: Vec<StreamAppend>,
        reads: Vec<StreamRead>,
    },
    /// Write these reports to the undelivered topic.
    Undelivered(Vec<Undelivered>),
    /// Devices that came online (true) or went offline, for the presence topic.
    Presence {
        events: Vec<DeviceEvent>,
        at_ms: u64,
    },
}

pub struct Services {
    pub core: usize,
    /// Calls to the control thread; present when any remote service is configured.
    pub calls: Option<mpsc::Sender<ServiceCall>>,
    /// Remote backends' messages, batched per biz.
    pub batcher: Batcher<UpstreamRequest>,
    /// Claims for the shared store gathered during the current executor pass.
    pub pending_claims: Vec<UpstreamRequest>,
    /// Stream appends and reads gathered during the current executor pass.
    pub pending_streams: (Vec<StreamAppend>, Vec<StreamRead>),
    /// A flush of the pending claims and stream operations is already scheduled.
    pub flush_queued: bool,
    /// Batches that started waiting: the shell calls [`Services::flush_due`] at each deadline.
    pub timers: Vec<(u64, u64, Instant)>,
    /// Undelivered pushes also go to the Kafka undelivered topic (they are always logged and
    /// counted).
    pub report_to_kafka: bool,
    /// Undelivered pushes since the last log line.
    pub tally: Tally,
}

impl Services {
    /// Devices that came online or went offline, for the presence topic.
    pub fn presence(&self, events: Vec<DeviceEvent>) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if !self.send(ServiceCall::Presence { events, at_ms }) {
            warn!("control thread saturated: presence events dropped");
        }
    }

    /// Reports pushes that reached no device: a log line each (no body), and the Kafka topic
    /// when configured.
    pub fn report(&mut self, undelivered: Vec<Undelivered>) {
        for u in &undelivered {
            self.tally.add(u);
        }
        if self.report_to_kafka && !self.send(ServiceCall::Undelivered(undelivered)) {
            warn!("control thread saturated: undelivered reports only logged");
        }
    }

    /// Logs the undelivered pushes counted since the last call: one line per reason, with the
    /// first push as an example (client-supplied values escaped).
    pub fn log_tally(&mut self) {
        for (reason, l) in self.tally.flush() {
            info!(
                core = self.core,
                reason = reason.label(),
                count = l.count,
                stored = l.stored,
                example_biz_id = l.biz_id,
                example_user_id = ?l.user_id,
                example_key = ?l.key,
                example_offset = l.offset,
                "undelivered pushes"
            );
        }
    }

    /// Sends the shard's changes for the shared store.
    pub fn store_updates(&self, updates: Vec<IdemUpdate>) {
        let n = updates.len();
        if !self.send(ServiceCall::Update(updates)) {
            // The claims expire after their pending TTL; a client retry is then forwarded.
            warn!(
                updates = n,
                "control thread saturated: idempotency updates not stored"
            );
        }
    }

    /// A claim for the shared store, held until the end of the executor's current pass, so one
    /// Redis round trip serves the claims of every link that was read in it.
    pub fn claim(&mut self, req: UpstreamRequest) {
        self.pending_claims.push(req);
    }

    /// A stream append, held like a claim until the end of the pass.
    pub fn append(&mut self, a: StreamAppend) {
        self.pending_streams.0.push(a);
    }

    /// A stream read for an opening link, held like a claim until the end of the pass.
    pub fn read(&mut self, r: StreamRead) {
        self.pending_streams.1.push(r);
    }

    fn send(&self, call: ServiceCall) -> bool {
        self.calls
            .as_ref()
            .is_some_and(|c| c.try_send(call).is_ok())
    }

    /// True once per pass when claims or stream operations wait: the caller schedules
    /// [`Services::flush`].
    pub fn wants_flush(&mut self) -> bool {
        let waiting = !self.pending_claims.is_empty()
            || !self.pending_streams.0.is_empty()
            || !self.pending_streams.1.is_empty();
        waiting && !std::mem::replace(&mut self.flush_queued, true)
    }

    /// Sends the claims and the stream operations gathered in this pass, one batch each.
    pub fn flush(&mut self, shard: &mut Shard, now: Instant) {
        self.flush_queued = false;
        self.flush_claims(shard, now);
        self.flush_streams(shard, now);
    }

    /// When the control thread cannot take them, the appends go out unstored and the
    /// links open with no stream, as when Redis is down.
    fn flush_streams(&mut self, shard: &mut Shard, now: Instant) {
        let (appends, reads) = std::mem::take(&mut self.pending_streams);
        if appends.is_empty() && reads.is_empty() {
            return;
        }
        let call = ServiceCall::Streams {
            core: self.core,
            appends,
            reads,
        };
        if let Err(e) = self
            .calls
            .as_ref()
            .expect("a shared stream store has a channel")
            .try_send(call)
        {
            let ServiceCall::Streams { appends, reads, .. } = e.into_inner() else {
                unreachable!("sent stream operations")
            };
            warn!(
                appends = appends.len(),
                reads = reads.len(),
                "control thread saturated: stream operations answered as store-down"
            );
            for a in appends {
                shard.on_appended(a.id, None, now);
            }
            for r in reads {
                shard.on_stream_read(r.conn, None, now);
            }
        }
    }

    fn flush_claims(&mut self, shard: &mut Shard, now: Instant) {
        let claims = std::mem::take(&mut self.pending_claims);
        if claims.is_empty() {
            return;
        }
        let n = claims.len();
        let call = ServiceCall::Claim {
            core: self.core,
            reqs: claims,
        };
        if let Err(e) = self
            .calls
            .as_ref()
            .expect("shared store has a channel")
            .try_send(call)
        {
            warn!(
                claims = n,
                "control thread saturated: claims answered as store-down"
            );
            let ServiceCall::Claim { reqs, .. } = e.into_inner() else {
                unreachable!("sent a claim")
            };
            for req in reqs {
                shard.on_claimed(req, None, now);
            }
        }
    }

    /// A message for a remote backend: it joins its biz's batch, which leaves when full or at
    /// its deadline (the shell calls [`Services::flush_due`] then).
    pub fn call(&mut self, shard: &mut Shard, req: UpstreamRequest, now: Instant) {
        match self.batcher.add(req.who.biz_id, req, now) {
            Added::Full(batch) => self.send_batch(shard, batch, now),
            Added::Opened { biz_id, id, due } => self.timers.push((biz_id, id, due)),
            Added::Joined => {}
        }
    }

    /// A batch's delay ran out: send it unless it already left full.
    pub fn flush_due(&mut self, shard: &mut Shard, biz_id: u64, id: u64, now: Instant) {
        if let Some(batch) = self.batcher.take_due(biz_id, id) {
            self.send_batch(shard, batch, now);
        }
    }

    fn send_batch(&mut self, shard: &mut Shard, batch: Vec<UpstreamRequest>, now: Instant) {
        let call = ServiceCall::Upstream {
            core: self.core,
            batch,
        };
        if let Err(e) = self
            .calls
            .as_ref()
            .expect("remote backend has a channel")
            .try_send(call)
        {
            let ServiceCall::Upstream { batch, .. } = e.into_inner() else {
                unreachable!("sent a batch")
            };
            warn!(
                messages = batch.len(),
                "control thread saturated: upstream messages refused"
            );
            let busy = BackendError::Unavailable("gateway overloaded; retry".into());
            for req in batch {
                shard.on_upstream_result(&req, Err(busy.clone()), now);
            }
        }
    }
}
