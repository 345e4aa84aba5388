//! The HTTP transports' side of the shard: requests that open or take over a link (an event
//! stream that resumes, the next long poll), the link waiting between them, `POST /send`, and
//! the long poll's one answer. The link's rules are the WebSocket's; only its attachment to the
//! request that serves it is particular, and it lives here.

use std::sync::Arc;
use std::time::Instant;

use super::input::Inbound;
use super::{Shard, connected_frame};
use crate::auth::Identity;
use crate::core::stream::Resume;
use crate::link::{Attachment, ConnId, Wire};
use crate::proto::{Cmd, Frame};
use crate::protocol::handshake::{HttpRequest, Route};
use crate::protocol::{Codec, events, json};

impl Shard {
    /// A request of the HTTP transports opens a link, or takes over the one the same device
    /// already has (a resumed stream, the next poll). Returns the link the request's socket now
    /// serves and the attachment generation that socket holds.
    /// `expires`: when the request's token runs out; the link lives until the latest one.
    pub fn attach(
        &mut self,
        conn: ConnId,
        who: Identity,
        req: &HttpRequest,
        expires: Instant,
        now: Instant,
    ) -> (ConnId, u32) {
        let origin = req.origin.as_deref();
        let poll = req.route == Route::Poll;
        // A resume is a new link, which replaces the device's old one as a new login does.
        let existing = self
            .device_link(&who, |w| {
                matches!(
                    (w, poll),
                    (Wire::EventStream(_), false) | (Wire::LongPoll(_), true)
                )
            })
            .filter(|_| req.since.is_none());
        let Some(existing) = existing else {
            let attachment = Box::new(Attachment {
                attached: true,
                ..Attachment::default()
            });
            let (wire, head) = if poll {
                (Wire::LongPoll(attachment), Vec::new())
            } else {
                (Wire::EventStream(attachment), events::stream_head(origin))
            };
            let since = req.since.as_ref();
            self.install(conn, Arc::new(who), Codec::Json, wire, head, since, now);
            self.extend_token(conn, expires);
            return (conn, 0);
        };
        self.metrics.http_attaches.inc();
        self.extend_token(existing, expires);
        let link = self.links.get_mut(&existing).expect("indexed link exists");
        let last_seq = link.last_seq();
        let a = link.wire.attachment_mut().expect("an HTTP-transport link");
        let handed_over = if a.attached {
            last_seq
        } else {
            a.seq_at_detach
        };
        a.generation += 1;
        a.attached = true;
        a.poll_due = false;
        let generation = a.generation;
        link.last_activity = now.into();
        // The previous request's task, if any, sees the new generation and steps aside.
        link.wake();
        if !poll {
            // A new response: its head first, then whatever waited while no stream was open.
            link.set_head(events::stream_head(origin));
        }
        // A link still waiting for its stream sends CONNECTED once that comes.
        if !poll && link.opening.is_none() {
            // The stream as far as this link has followed it.
            let stream = Resume::as_followed(link.seen.as_deref());
            let connected = connected_frame(&self.cfg, link, &stream);
            link.send_frame(&connected);
            self.metrics.frame_out(Cmd::Connected);
            // Pushes the old socket took after the last one the stream showed may have died
            // with it; later ones still wait in `out`.
            let lost: Vec<u64> = link
                .inflight
                .iter()
                .map(|f| f.seq)
                .filter(|s| (req.last_event_id + 1..=handed_over).contains(s))
                .collect();
            for seq in lost {
                self.retransmit(existing, seq, now);
            }
        }
        (existing, generation)
    }

    /// The socket of an HTTP-transport request is done (the poll was answered, the stream
    /// dropped). The link waits for the next request for one heartbeat timeout; a request that
    /// took over meanwhile (a newer generation) keeps it attached.
    pub fn detach(&mut self, conn: ConnId, generation: u32, now: Instant) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let last_seq = link.last_seq();
        let Some(a) = link
            .wire
            .attachment_mut()
            .filter(|a| a.generation == generation)
        else {
            return;
        };
        if link.closing.is_some() {
            return self.closed(conn);
        }
        a.attached = false;
        a.seq_at_detach = last_seq;
        link.last_activity = now.into();
    }

    /// `POST /send`: frames for the device's open HTTP-transport link, handled as if they came
    /// over a WebSocket. Answers are queued on the link, not in the POST's response.
    pub fn post(
        &mut self,
        who: &Identity,
        body: &[u8],
        expires: Instant,
        now: Instant,
    ) -> Result<(), (u16, String)> {
        let conn = self.device_link(who, Wire::is_http).ok_or((
            409,
            "no open stream for this device: open GET /sse or /poll first".to_owned(),
        ))?;
        let frames = events::split_send_body(body).map_err(|e| (400, e))?;
        let decoded: Vec<Frame> = frames
            .iter()
            .map(|raw| json::decode_frame(raw.get().as_bytes()).map_err(|e| (400, e.0)))
            .collect::<Result<_, _>>()?;
        self.metrics.http_sends.inc();
        self.extend_token(conn, expires);
        if let Some(link) = self.links.get_mut(&conn) {
            link.last_activity = now.into();
        }
        for f in decoded {
            self.handle(conn, Inbound::Frame(Box::new(f)), now);
        }
        self.check_backlog(conn, now);
        self.settle(now);
        Ok(())
    }

    /// Whether the HTTP request holding `generation` still serves the link: no newer request
    /// took it over and the link has not ended.
    pub fn serves(&self, conn: ConnId, generation: u32) -> bool {
        self.links.get(&conn).is_some_and(|l| {
            !l.finished
                && l.wire
                    .attachment()
                    .is_some_and(|a| a.generation == generation)
        })
    }

    /// A waiting long poll's answer, once it is due: every frame queued as one batch, an empty
    /// batch when the heartbeat interval came, or the close.
    pub fn take_poll_answer(&mut self, conn: ConnId, origin: Option<&str>) -> Option<Vec<u8>> {
        let link = self.links.get_mut(&conn)?;
        let Wire::LongPoll(attachment) = &mut link.wire else {
            return None;
        };
        if link.out.is_empty() && !attachment.poll_due && link.closing.is_none() {
            return None;
        }
        attachment.poll_due = false;
        let batch = link.take_out();
        let close = link.closing.and(link.close_note.as_deref());
        Some(events::poll_response(
            origin,
            &batch,
            close.map(|(c, r)| (*c, &**r)),
        ))
    }
}
