//! The built-in backend of the embedded mode: accepts every upstream message at once and, with
//! `--echo`, pushes its body back to the sending device.

use std::time::Instant;

use bytes::Bytes;

use super::shard::Shard;
use crate::link::push::EncodedPush;

pub struct LoopbackBackend {
    pub echo: bool,
}

impl LoopbackBackend {
    /// Answers everything the shard has queued for the backend.
    pub fn serve(&self, shard: &mut Shard, now: Instant) {
        for req in shard.take_upstream() {
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
    }
}
