//! The stream side of the shard (DESIGN §2a): a push is appended to its user's stream before
//! it is delivered, and a link that opens with `since` gets what it missed, in offset order,
//! before any live push.

use std::time::Instant;

use super::Shard;
use crate::auth::Identity;
use crate::core::stream::{Resume, ResumeMiss};
use crate::link::push::{EncodedPush, StreamAt};
use crate::link::{ConnId, Inflight};
use crate::metrics::ResumeResult;
use crate::protocol::handshake::Since;

impl Shard {
    /// The user's stream as a link opening now sees it, with what to replay after `since`.
    pub(super) fn open_stream(
        &mut self,
        who: &Identity,
        since: Option<&Since>,
        now: Instant,
    ) -> Resume {
        let stream = self
            .embedded
            .streams
            .resume(who.biz_id, &who.user_id, since, now);
        if let Some(replay) = &stream.replay {
            self.metrics.resumes.inc(match replay {
                Ok(_) => ResumeResult::Recovered,
                Err(ResumeMiss::Epoch) => ResumeResult::Epoch,
                Err(ResumeMiss::TooOld) => ResumeResult::TooOld,
                Err(ResumeMiss::TooMany) => ResumeResult::TooMany,
            });
        }
        stream
    }

    /// Appends a push to its user's stream: where it landed, and whether it is new there (a
    /// push seen before keeps its first offset).
    pub(super) fn append(
        &mut self,
        biz_id: u64,
        user: &str,
        push: &EncodedPush,
        now: Instant,
    ) -> (StreamAt, bool) {
        let a = self.embedded.streams.append(
            biz_id,
            user,
            &push.key,
            push.body(),
            push.wire_body(),
            now,
        );
        if a.fresh {
            self.metrics.stream_appends.inc();
        } else {
            self.metrics.stream_duplicates.inc();
        }
        let at = StreamAt {
            epoch: a.epoch,
            offset: a.offset,
        };
        (at, a.fresh)
    }

    /// A new link's first pushes: the stream entries it asked for, then what the link it
    /// replaced left unacked, each acked and retransmitted like a live push. After a
    /// recovered resume, the stored ones among the latter are left out: up to `since` the
    /// client says it has them, after it the replay just sent them.
    pub(super) fn replay(
        &mut self,
        conn: ConnId,
        stream: &Resume,
        carried: Vec<Inflight>,
        now: Instant,
    ) {
        let mut covered = None;
        if let Some(Ok(entries)) = &stream.replay {
            for e in entries {
                let push = EncodedPush::tracked(&e.key, e.body.clone(), e.wire_body.clone(), None);
                let at = StreamAt {
                    epoch: stream.epoch.clone(),
                    offset: e.offset,
                };
                self.deliver(conn, push, Some(at), now, now, None);
                self.metrics.replayed.inc();
            }
            covered = Some(&stream.epoch);
        }
        for f in carried {
            let has_it = covered.is_some_and(|e| f.at.as_ref().is_some_and(|a| a.epoch == *e));
            if !has_it {
                self.deliver(conn, f.push, f.at, now, f.accepted_at, Some(f.first_sent));
            }
        }
    }
}
