//! Where a core's upstream messages go: idempotency claims and backend calls. The embedded
//! services answer at once (the in-memory store, the loopback backend); a shared store (Redis)
//! answers later, through the control thread and back into the core's inbox.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use super::shard::{Shard, UpstreamRequest};
use crate::control::services::ServiceCall;
use crate::link::idem::{Claim, IdemStore};
use crate::link::push::EncodedPush;

/// What a node does with upstream messages while its shared idempotency store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreDownPolicy {
    /// Claim in the owner core's local store: messages keep flowing; retries that reach the same
    /// node are still deduplicated, retries through another node may reach the backend twice.
    Local,
    /// Answer ERROR(CODE_BACKEND_UNAVAILABLE): nothing reaches the backend without a shared claim.
    Refuse,
}

/// The link from a core to the shared store on the control thread.
pub struct SharedStore {
    pub core: usize,
    pub calls: mpsc::Sender<ServiceCall>,
    pub policy: StoreDownPolicy,
}

pub struct Services {
    /// The embedded store; with a shared store, the fallback under `StoreDownPolicy::Local`
    /// and a local copy of replies.
    pub local: Box<dyn IdemStore>,
    pub shared: Option<SharedStore>,
    /// Loopback backend: push each upstream body back to its sender.
    pub echo: bool,
}

impl Services {
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
                match &self.shared {
                    None => {
                        for req in claims {
                            let claim = self.local.claim(req.who.biz_id, &req.key, now);
                            shard.on_claim(req, claim, now);
                        }
                    }
                    Some(shared) => {
                        let call = ServiceCall::Claim {
                            core: shared.core,
                            reqs: claims,
                        };
                        if let Err(e) = shared.calls.try_send(call) {
                            warn!("control thread saturated: claims answered as store-down");
                            let ServiceCall::Claim { reqs, .. } = e.into_inner() else {
                                unreachable!()
                            };
                            let answers = reqs.into_iter().map(|r| (r, None)).collect();
                            self.on_claimed(shard, answers, now);
                        }
                    }
                }
            }
            for req in calls {
                shard.on_upstream_result(&req, Ok(Bytes::new()), now);
                if self.echo {
                    let push = EncodedPush::new(&req.key, req.body.clone());
                    let user = [req.who.user_id.clone()];
                    shard.push(
                        req.who.biz_id,
                        &user,
                        Some(&req.who.device_id),
                        &push,
                        now,
                        now,
                    );
                }
            }
            if let Some(shared) = &self.shared
                && shared
                    .calls
                    .try_send(ServiceCall::Update(updates.clone()))
                    .is_err()
            {
                // The claim expires after its pending TTL; the client's retry is forwarded again.
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

    /// The shared store answered claims; `None` means it was unreachable.
    pub fn on_claimed(
        &mut self,
        shard: &mut Shard,
        answers: Vec<(UpstreamRequest, Option<Claim>)>,
        now: Instant,
    ) {
        let policy = self
            .shared
            .as_ref()
            .map_or(StoreDownPolicy::Local, |s| s.policy);
        for (req, claim) in answers {
            match (claim, policy) {
                (Some(claim), _) => shard.on_claim(req, claim, now),
                (None, StoreDownPolicy::Local) => {
                    shard.metrics.idem_fallbacks.inc();
                    let claim = self.local.claim(req.who.biz_id, &req.key, now);
                    shard.on_claim(req, claim, now);
                }
                (None, StoreDownPolicy::Refuse) => shard.on_claim_refused(req),
            }
        }
        self.settle(shard, now);
    }
}
