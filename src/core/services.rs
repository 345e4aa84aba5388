//! Where a core's upstream messages go: idempotency claims and backend calls. The embedded
//! services answer at once (the in-memory store, the loopback backend); the shared store (Redis)
//! and the gRPC backend answer later, through the control thread and back into the core's inbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::batcher::{Added, Batcher};
use super::shard::{BackendError, Shard, Undelivered, UpstreamRequest};
use super::tally::Tally;
use crate::auth::Identity;
use crate::link::idem::{Claim, IdemStore, IdemUpdate};

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
    /// Write these reports to the undelivered topic.
    Undelivered(Vec<Undelivered>),
    /// Devices that came online (true) or went offline, for the presence topic.
    Presence {
        events: Vec<(Arc<Identity>, bool)>,
        at_ms: u64,
    },
}

/// Which bizs the cores serve locally; shared read-only by every core.
#[derive(Debug, Clone, Default)]
pub struct LocalBizs {
    default_local: bool,
    overrides: HashMap<u64, bool>,
}

impl LocalBizs {
    /// `default_local`: bizs with no route of their own are served locally; `overrides`: the
    /// bizs whose route says otherwise.
    pub fn new(default_local: bool, overrides: HashMap<u64, bool>) -> LocalBizs {
        LocalBizs {
            default_local,
            overrides,
        }
    }

    pub fn is_local(&self, biz_id: u64) -> bool {
        self.overrides
            .get(&biz_id)
            .copied()
            .unwrap_or(self.default_local)
    }

    pub fn all_local(&self) -> bool {
        self.default_local && self.overrides.values().all(|l| *l)
    }
}

/// What a node does with upstream messages while its shared idempotency store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreDownPolicy {
    /// Claim in the owner core's local store: messages keep flowing; retries that reach the same
    /// node are still deduplicated, retries through another node may reach the backend twice.
    Local,
    /// Answer ERROR(CODE_BACKEND_UNAVAILABLE): nothing reaches the backend without a shared claim.
    Refuse,
}

/// Where upstream messages go: bizs routed to the loopback backend are answered here at once;
/// the others are batched per biz and sent to the control thread, which routes them.
pub struct Backend {
    pub local_bizs: Arc<LocalBizs>,
    /// Loopback: push each body back to its sender.
    pub echo: bool,
    pub batcher: Batcher<UpstreamRequest>,
}

pub struct Services {
    pub core: usize,
    /// The embedded store; with a shared store, the fallback under `StoreDownPolicy::Local`
    /// and a local copy of replies.
    pub local: Box<dyn IdemStore>,
    /// Calls to the control thread; present when any remote service is configured.
    pub calls: Option<mpsc::Sender<ServiceCall>>,
    /// With a shared store (Redis): what to do while it is unreachable.
    pub shared_store: Option<StoreDownPolicy>,
    pub backend: Backend,
    /// Claims for the shared store gathered during the current executor pass.
    pub pending_claims: Vec<UpstreamRequest>,
    /// A flush of `pending_claims` is already scheduled.
    pub claim_flush_queued: bool,
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
    pub fn presence(&self, events: Vec<(Arc<Identity>, bool)>) {
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
                example_biz_id = l.biz_id,
                example_user_id = ?l.user_id,
                example_key = ?l.key,
                "undelivered pushes"
            );
        }
    }

    /// Answers or sends on everything the shard queued for the store and the backend, until it
    /// has nothing more to ask.
    pub fn settle(&mut self, shard: &mut Shard, now: Instant) {
        loop {
            let claims = shard.take_claims();
            let calls = shard.take_upstream();
            let updates = shard.take_idem_updates();
            if claims.is_empty() && calls.is_empty() && updates.is_empty() {
                return;
            }
            if !claims.is_empty() {
                self.claim(shard, claims, now);
            }
            for req in calls {
                self.call(shard, req, now);
            }
            if self.shared_store.is_some()
                && !updates.is_empty()
                && !self.send(ServiceCall::Update(updates.clone()))
            {
                // The claims expire after their pending TTL; a client retry is then forwarded.
                warn!(
                    updates = updates.len(),
                    "control thread saturated: idempotency updates not stored"
                );
            }
            for u in updates {
                self.local.update(u, now);
            }
        }
    }

    fn send(&self, call: ServiceCall) -> bool {
        self.calls
            .as_ref()
            .is_some_and(|c| c.try_send(call).is_ok())
    }

    fn claim(&mut self, shard: &mut Shard, claims: Vec<UpstreamRequest>, now: Instant) {
        if self.shared_store.is_none() {
            for req in claims {
                let claim = self.local.claim(&req.who, &req.key, now);
                shard.on_claim(req, claim, now);
            }
            return;
        }
        // Held until the end of the executor's current pass, so one Redis round trip serves
        // the claims of every link that was read in it.
        self.pending_claims.extend(claims);
    }

    /// Sends the claims gathered in this pass as one batch (the shell calls this once per pass
    /// while `pending_claims` is not empty).
    /// True once per pass when claims wait: the caller schedules [`Services::flush_claims`].
    pub fn wants_claim_flush(&mut self) -> bool {
        !self.pending_claims.is_empty() && !std::mem::replace(&mut self.claim_flush_queued, true)
    }

    pub fn flush_claims(&mut self, shard: &mut Shard, now: Instant) {
        self.claim_flush_queued = false;
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
            let answers = reqs.into_iter().map(|r| (r, None)).collect();
            self.on_claimed(shard, answers, now);
        }
    }

    fn call(&mut self, shard: &mut Shard, req: UpstreamRequest, now: Instant) {
        let backend = &mut self.backend;
        match backend.local_bizs.is_local(req.who.biz_id) {
            true => {
                shard.on_upstream_result(&req, Ok(Bytes::new()), now);
                if backend.echo {
                    let push = shard.encode_push(req.who.biz_id, &req.key, req.body.clone(), None);
                    let user = [req.who.user_id.clone()];
                    shard.push(
                        req.who.biz_id,
                        &user,
                        Some(&req.who.device_id),
                        &push,
                        true,
                        now,
                        now,
                    );
                }
            }
            false => match backend.batcher.add(req.who.biz_id, req, now) {
                Added::Full(batch) => self.send_batch(shard, batch, now),
                Added::Opened { biz_id, id, due } => self.timers.push((biz_id, id, due)),
                Added::Joined => {}
            },
        }
    }

    /// A batch's delay ran out: send it unless it already left full.
    pub fn flush_due(&mut self, shard: &mut Shard, biz_id: u64, id: u64, now: Instant) {
        if let Some(batch) = self.backend.batcher.take_due(biz_id, id) {
            self.send_batch(shard, batch, now);
            self.settle(shard, now);
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

    /// The shared store answered claims; `None` means it was unreachable.
    pub fn on_claimed(
        &mut self,
        shard: &mut Shard,
        answers: Vec<(UpstreamRequest, Option<Claim>)>,
        now: Instant,
    ) {
        let policy = self.shared_store.unwrap_or(StoreDownPolicy::Local);
        for (req, claim) in answers {
            match (claim, policy) {
                (Some(claim), _) => shard.on_claim(req, claim, now),
                (None, StoreDownPolicy::Local) => {
                    shard.metrics.idem_fallbacks.inc();
                    let claim = self.local.claim(&req.who, &req.key, now);
                    shard.on_claim(req, claim, now);
                }
                (None, StoreDownPolicy::Refuse) => shard.on_claim_refused(req),
            }
        }
        self.settle(shard, now);
    }

    /// The backend answered.
    pub fn on_answered(
        &mut self,
        shard: &mut Shard,
        answers: Vec<(UpstreamRequest, Result<Bytes, BackendError>)>,
        now: Instant,
    ) {
        for (req, result) in answers {
            shard.on_upstream_result(&req, result, now);
        }
        self.settle(shard, now);
    }
}
