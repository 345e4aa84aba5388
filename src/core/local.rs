//! The embedded mode's services, which answer at once: the in-memory idempotency store and the
//! built-in loopback backend (accepts every upstream message and, with `--echo`, pushes its body
//! back to the sending device).

use std::time::Instant;

use bytes::Bytes;

use super::shard::Shard;
use crate::link::idem::IdemStore;
use crate::link::push::EncodedPush;

pub struct LocalServices {
    pub store: Box<dyn IdemStore>,
    pub echo: bool,
}

impl LocalServices {
    /// Answers everything the shard queued for the store and the backend, until it has nothing
    /// more to ask.
    pub fn settle(&mut self, shard: &mut Shard, now: Instant) {
        loop {
            let claims = shard.take_claims();
            let calls = shard.take_upstream();
            let updates = shard.take_idem_updates();
            if claims.is_empty() && calls.is_empty() && updates.is_empty() {
                return;
            }
            for req in claims {
                let claim = self.store.claim(req.who.biz_id, &req.key, now);
                shard.on_claim(req, claim, now);
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
            for u in updates {
                self.store.update(u, now);
            }
        }
    }
}
