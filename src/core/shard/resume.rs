//! The stream side of the shard (DESIGN §2a): a push is appended to its user's stream before
//! it is delivered, and a link that opens with `since` gets what it missed, in offset order,
//! before any live push.
//!
//! With the core's own store both happen at once. With a shared store (Redis) they are
//! round trips: pushes wait in arrival order until their append is answered (so a user's
//! pushes go out in the order their offsets were given, whatever order the answers come
//! back in), and a new link waits for its stream's state before CONNECTED, holding the
//! client's bytes and the pushes that come meanwhile.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use super::{Delivery, Event, Shard, connected_frame};
use crate::auth::Identity;
use crate::core::embedded::StreamStore;
use crate::core::stream::{
    Entry, Resume, ResumeMiss, Stored, StreamAppend, StreamRead, StreamState,
};
use crate::link::push::{EncodedPush, StreamAt};
use crate::link::{ConnId, Held, Inflight, Opening, close_code};
use crate::metrics::{CloseReason, ResumeResult};
use crate::proto::Cmd;
use crate::protocol::handshake::Since;

/// A push waiting, in arrival order, for the shared store's answer to its append (or behind
/// one that does).
pub(super) struct Appending {
    id: u64,
    biz_id: u64,
    user: String,
    device: Option<String>,
    push: Rc<EncodedPush>,
    how: Delivery,
    /// `None` while the store has not answered; `Some(None)`: not stored.
    answer: Option<Option<(StreamAt, bool)>>,
}

/// The pushes waiting for their appends, oldest first.
#[derive(Default)]
pub(super) struct Appends {
    queue: VecDeque<Appending>,
    next_id: u64,
}

impl Shard {
    /// Stores (where it must) and delivers a push for one user; with a shared store, once its
    /// turn comes.
    pub(super) fn push_user(
        &mut self,
        biz_id: u64,
        user: &str,
        device: Option<&str>,
        push: &Rc<EncodedPush>,
        how: Delivery,
        now: Instant,
    ) {
        // A device's push is not stored; in broadcast routing, neither is a push for a user
        // another node holds.
        let storable = device.is_none() && (how.report_offline || self.has_links(biz_id, user));
        let local = match &mut self.embedded.streams {
            StreamStore::Local(s) => s,
            StreamStore::Shared => {
                let id = self.appends.next_id;
                self.appends.next_id += 1;
                if storable {
                    self.events.push_back(Event::StreamAppend(StreamAppend {
                        id,
                        biz_id,
                        user_id: user.to_owned(),
                        key: push.key.to_string(),
                        body: push.body().clone(),
                    }));
                }
                self.metrics.appends_waiting.inc();
                self.appends.queue.push_back(Appending {
                    id,
                    biz_id,
                    user: user.to_owned(),
                    device: device.map(str::to_owned),
                    push: push.clone(),
                    how,
                    answer: (!storable).then_some(None),
                });
                return self.flush_appends(now);
            }
        };
        let stored = storable.then(|| {
            let a = local.append(biz_id, user, &push.key, push.body(), push.wire_body(), now);
            let at = StreamAt {
                epoch: a.epoch,
                offset: a.offset,
            };
            (at, a.fresh)
        });
        self.count_append(stored.as_ref());
        self.fan_out(biz_id, user, device, push, stored, how, now);
    }

    fn count_append(&self, stored: Option<&(StreamAt, bool)>) {
        match stored {
            Some((_, true)) => self.metrics.stream_appends.inc(),
            Some((_, false)) => self.metrics.stream_duplicates.inc(),
            None => {}
        }
    }

    /// The shared store answered the append `id` (`None`: it could not be reached, and the
    /// push goes out unstored, with offset 0).
    pub fn on_appended(&mut self, id: u64, stored: Option<Stored>, now: Instant) {
        let Some(front) = self.appends.queue.front() else {
            return;
        };
        let Some(slot) = id
            .checked_sub(front.id)
            .and_then(|i| self.appends.queue.get_mut(i as usize))
        else {
            return;
        };
        let answer = match stored {
            Some(s) => {
                let at = StreamAt {
                    epoch: s.epoch.into(),
                    offset: s.offset,
                };
                Some((at, s.fresh))
            }
            None => {
                self.metrics.stream_store_errors.inc();
                None
            }
        };
        slot.answer = Some(answer);
        self.flush_appends(now);
    }

    /// Delivers the answered pushes at the front of the queue.
    fn flush_appends(&mut self, now: Instant) {
        while self
            .appends
            .queue
            .front()
            .is_some_and(|a| a.answer.is_some())
        {
            let a = self.appends.queue.pop_front().expect("checked");
            self.metrics.appends_waiting.dec();
            let stored = a.answer.expect("checked");
            self.count_append(stored.as_ref());
            let device = a.device.as_deref();
            self.fan_out(a.biz_id, &a.user, device, &a.push, stored, a.how, now);
        }
    }

    /// A link opens: with the core's own store, CONNECTED and the replay go out now; with a
    /// shared one, the link asks for its stream and waits.
    pub(super) fn open_stream(
        &mut self,
        conn: ConnId,
        who: &Identity,
        since: Option<&Since>,
        carried: Vec<Inflight>,
        now: Instant,
    ) {
        let stream = match &mut self.embedded.streams {
            StreamStore::Local(s) => s.resume(who.biz_id, &who.user_id, since, now),
            StreamStore::Shared => {
                self.events.push_back(Event::StreamRead(StreamRead {
                    conn,
                    biz_id: who.biz_id,
                    user_id: who.user_id.to_string(),
                    since: since.cloned(),
                }));
                let link = self.links.get_mut(&conn).expect("just installed");
                link.opening = Some(Box::new(Opening {
                    since: since.cloned(),
                    carried,
                    ..Opening::default()
                }));
                return;
            }
        };
        self.greet(conn, stream, carried, Vec::new(), now);
    }

    /// The shared store answered a link's question (`None`: it could not be reached; the
    /// link starts with no stream, and a resume is not recovered).
    pub fn on_stream_read(&mut self, conn: ConnId, state: Option<StreamState>, now: Instant) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if !link.is_open() {
            // Closed meanwhile (kicked, redirected): nothing may follow its close; what it
            // held is reported when its socket goes.
            return;
        }
        let Some(opening) = link.opening.take() else {
            return;
        };
        let biz_id = self.links[&conn].who.biz_id;
        let mut rooms = Vec::new();
        let stream = match state {
            Some(mut s) => {
                rooms = std::mem::take(&mut s.rooms);
                rooms.retain(|r| !opening.left.contains(r));
                let replay = s.replay.map(|r| {
                    r.map(|entries| {
                        let seal = |b| self.cfg.body_keys.seal(biz_id, b);
                        entries
                            .into_iter()
                            .map(|e| {
                                let wire = seal(e.body.clone());
                                Entry::new(e.offset, e.key.into(), e.body, wire, now)
                            })
                            .collect()
                    })
                });
                Resume {
                    epoch: s.epoch.into(),
                    top: s.top,
                    replay,
                }
            }
            None => {
                self.metrics.stream_store_errors.inc();
                Resume {
                    epoch: "".into(),
                    top: 0,
                    replay: opening.since.as_ref().map(|_| Err(ResumeMiss::StoreDown)),
                }
            }
        };
        let Opening {
            carried,
            held,
            mut input,
            ..
        } = *opening;
        self.greet(conn, stream, carried, held, now);
        self.join_link(conn, &rooms);
        if !input.is_empty() {
            self.handle_bytes(conn, &mut input, now);
        }
    }

    /// CONNECTED with the stream's state, then the link's first pushes: the entries it asked
    /// for, what the link it replaced left unacked, and what came while it waited; each acked
    /// and retransmitted like a live push, each stored offset at most once.
    fn greet(
        &mut self,
        conn: ConnId,
        stream: Resume,
        carried: Vec<Inflight>,
        held: Vec<Held>,
        now: Instant,
    ) {
        if let Some(replay) = &stream.replay {
            self.metrics.resumes.inc(match replay {
                Ok(_) => ResumeResult::Recovered,
                Err(ResumeMiss::Epoch) => ResumeResult::Epoch,
                Err(ResumeMiss::TooOld) => ResumeResult::TooOld,
                Err(ResumeMiss::TooMany) => ResumeResult::TooMany,
                Err(ResumeMiss::StoreDown) => ResumeResult::StoreDown,
            });
        }
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        link.seen = stream.followed().map(Box::new);
        // A conformance suite expects nothing before its first echo.
        if !self.cfg.ws_echo {
            let connected = connected_frame(&self.cfg, link, &stream);
            link.send_frame(&connected);
            self.metrics.frame_out(Cmd::Connected);
        }
        let mut covered = None;
        if let Some(Ok(entries)) = &stream.replay {
            for e in entries {
                // The stream's key, shared.
                let push =
                    EncodedPush::tracked(e.key.clone(), e.body.clone(), e.wire_body.clone(), None);
                let at = StreamAt {
                    epoch: stream.epoch.clone(),
                    offset: e.offset,
                };
                self.deliver(conn, push, Some(at), now, now, None);
                self.metrics.replayed.inc();
            }
            covered = Some(&stream.epoch);
        }
        // Up to `since` the client says it has the stored ones; after it, the replay just
        // sent them.
        for f in carried {
            let has_it = covered.is_some_and(|e| f.at.as_ref().is_some_and(|a| a.epoch == *e));
            if !has_it {
                self.deliver(conn, f.push, f.at, now, f.accepted_at, Some(f.first_sent));
            }
        }
        for h in held {
            let seen =
                h.at.as_ref()
                    .is_some_and(|at| self.links[&conn].has_had(at));
            if !seen {
                self.deliver(conn, h.push, h.at, now, h.accepted_at, None);
            }
        }
    }

    /// Bytes a client sent before its CONNECTED: kept for then, up to one message's worth.
    /// True if the link is still opening (the bytes were taken).
    pub(super) fn hold_input(&mut self, conn: ConnId, input: &[u8], now: Instant) -> bool {
        let max = self.cfg.max_message_bytes;
        let Some(opening) = self.links.get_mut(&conn).and_then(|l| l.opening.as_mut()) else {
            return false;
        };
        if opening.input.len() + input.len() > max {
            let reason = "too much sent before CONNECTED";
            self.close_link(
                conn,
                close_code::PROTOCOL_ERROR,
                reason,
                CloseReason::ProtocolError,
                now,
            );
            return true;
        }
        opening.input.extend_from_slice(input);
        true
    }
}
