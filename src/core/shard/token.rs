//! A link lives no longer than its token (DESIGN §2 "Token lifetime"): at the token's `exp`
//! plus the grace it gets ERROR(CODE_TOKEN_EXPIRED) and close 4005, unless a REFRESH with a
//! newer token for the same identity moved the deadline first. The deadline is a timer on the
//! core's wheel; nothing scans the links. Tokens are checked by the shell (the shard holds no
//! key): a REFRESH leaves as [`Event::Refresh`] and comes back through
//! [`Shard::on_refreshed`].

use std::time::Instant;

use super::{Event, Shard, TimerEvent};
use crate::auth::Identity;
use crate::link::{ConnId, close_code};
use crate::metrics::CloseReason;
use crate::proto::{Cmd, Code, Frame};

impl Shard {
    /// Sets the link's deadline to `expires`, or moves it later (the latest token seen wins:
    /// an HTTP request with an older token does not shorten it).
    pub(super) fn extend_token(&mut self, conn: ConnId, expires: Instant) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if let Some((at, timer)) = link.token_deadline {
            if at.instant() >= expires {
                return;
            }
            self.wheel.cancel(timer);
        }
        let timer = self.wheel.insert(expires, TimerEvent::TokenExpiry(conn));
        link.token_deadline = Some((expires.into(), timer));
    }

    /// A client's REFRESH: its token goes to the shell to be checked.
    pub(super) fn on_refresh(&mut self, conn: ConnId, token: String) {
        if token.is_empty() {
            let reason = "REFRESH needs a token".to_owned();
            return self.reply_error(conn, "", Code::Unauthorized, reason);
        }
        self.events.push_back(Event::Refresh { conn, token });
    }

    /// The shell checked a REFRESH's token: `Ok` with whom it names and the deadline it gives,
    /// or why it is refused. Only a token for the link's own biz, user and device moves it.
    pub fn on_refreshed(
        &mut self,
        conn: ConnId,
        checked: Result<(Identity, Instant), String>,
        now: Instant,
    ) {
        let Some(link) = self.links.get(&conn).filter(|l| l.is_open()) else {
            return;
        };
        let expires = match checked {
            Ok((who, _)) if who != *link.who => {
                Err("a refresh must name the link's own biz, user and device".to_owned())
            }
            Ok((_, expires)) if expires <= now => Err("the new token has expired".to_owned()),
            Ok((_, expires)) => Ok(expires),
            Err(why) => Err(why),
        };
        match expires {
            Ok(expires) => self.extend_token(conn, expires),
            Err(reason) => return self.reply_error(conn, "", Code::Unauthorized, reason),
        }
        let link = self.links.get_mut(&conn).expect("checked above");
        let answer = Frame {
            cmd: Cmd::Refresh as i32,
            code: Code::Ok as i32,
            ..Default::default()
        };
        link.send_frame(&answer);
        self.metrics.frame_out(Cmd::Refresh);
    }

    /// The deadline passed with no refresh.
    pub(super) fn token_expired(&mut self, conn: ConnId, now: Instant) {
        let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) else {
            return;
        };
        link.token_deadline = None;
        let frame = Frame {
            cmd: Cmd::Error as i32,
            code: Code::TokenExpired as i32,
            reason: "token expired: reconnect or REFRESH with a new one".into(),
            ..Default::default()
        };
        link.send_frame(&frame);
        self.metrics.frame_out(Cmd::Error);
        let why = CloseReason::TokenExpired;
        self.close_link(conn, close_code::TOKEN_EXPIRED, "token expired", why, now);
    }
}
