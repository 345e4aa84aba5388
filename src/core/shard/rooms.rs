//! Rooms and broadcast on one core (DESIGN §4a). A room's members are links of many users,
//! so every core holds its own room → links index (no locks) and a room message goes to every
//! core, which encodes it once for its members. Membership belongs to the user: a join or
//! leave applies to every open link of the user here (all of a user's links on a node live on
//! its owner core).
//!
//! Delivery is best effort unless `reliable`: no seq (a dropped one is never a false gap), no
//! ack, nothing queued on a link already backlogged or still opening. Reliable messages take a
//! seq and are acked and retransmitted like pushes; what never arrives is counted, not
//! reported per user (there is no user stream of rooms to fall back on).

use std::rc::Rc;
use std::time::Instant;

use super::UserLinks;
use super::{Shard, Target};
use crate::link::ConnId;
use crate::link::push::EncodedPush;
use crate::proto::Cmd;

/// Where a room message goes: one room of a biz, or (broadcast) every link of it.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    Room(&'a str),
    Biz,
}

impl Shard {
    /// The link joins `rooms` (its token's claim at connect); past `--max-rooms-per-user` the
    /// rest are refused and counted. Returns how many it joined.
    pub fn join_link(&mut self, conn: ConnId, rooms: &[String]) -> usize {
        let max = self.cfg.max_rooms_per_user;
        let Some(link) = self.links.get_mut(&conn).filter(|l| l.is_open()) else {
            return 0;
        };
        let biz_id = link.who.biz_id;
        let mut joined = 0;
        for room in rooms {
            if link.rooms.iter().any(|r| **r == **room) {
                continue;
            }
            if link.rooms.len() >= max {
                self.metrics.rooms_refused.inc();
                continue;
            }
            let room: Rc<str> = match self
                .rooms
                .get(&biz_id)
                .and_then(|r| r.get_key_value(&**room))
            {
                Some((k, _)) => k.clone(),
                None => room.as_str().into(),
            };
            link.rooms.push(room.clone());
            let members = self
                .rooms
                .entry(biz_id)
                .or_default()
                .entry(room)
                .or_default();
            members.push(conn);
            joined += 1;
        }
        joined
    }

    /// Every open link of the user joins `rooms` (named once each), or, if that would put one
    /// past `--max-rooms-per-user`, none does: `Err` with the rooms that link is in. Returns
    /// how many links it reached.
    pub fn join(&mut self, biz_id: u64, user_id: &str, rooms: &[String]) -> Result<usize, usize> {
        let conns = self.user_links(biz_id, user_id);
        for c in &conns {
            let have = &self.links[c].rooms;
            let new = rooms.iter().filter(|r| !have.iter().any(|h| **h == ***r));
            if have.len() + new.count() > self.cfg.max_rooms_per_user {
                self.metrics.rooms_refused.inc();
                return Err(have.len());
            }
        }
        for c in &conns {
            self.join_link(*c, rooms);
        }
        Ok(conns.len())
    }

    /// Every open link of the user leaves `rooms`; returns how many links it reached.
    pub fn leave(&mut self, biz_id: u64, user_id: &str, rooms: &[String]) -> usize {
        let conns = self.user_links(biz_id, user_id);
        for c in &conns {
            let link = self.links.get_mut(c).expect("matched link exists");
            link.rooms.retain(|r| !rooms.iter().any(|x| **x == **r));
            if let Some(opening) = link.opening.as_mut() {
                opening.left.extend(rooms.iter().cloned());
            }
            for room in rooms {
                self.drop_member(biz_id, room, *c);
            }
        }
        conns.len()
    }

    fn user_links(&self, biz_id: u64, user_id: &str) -> UserLinks {
        self.matching(&Target {
            biz_id,
            user_id,
            device_id: None,
        })
    }

    fn drop_member(&mut self, biz_id: u64, room: &str, conn: ConnId) {
        let Some(rooms) = self.rooms.get_mut(&biz_id) else {
            return;
        };
        if let Some(members) = rooms.get_mut(room) {
            members.retain(|c| *c != conn);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
        if rooms.is_empty() {
            self.rooms.remove(&biz_id);
        }
    }

    /// A closing link leaves its rooms.
    pub(super) fn unroom(&mut self, conn: ConnId) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let (biz_id, rooms) = (link.who.biz_id, std::mem::take(&mut link.rooms));
        for room in rooms {
            self.drop_member(biz_id, &room, conn);
        }
    }

    /// A room message (or a broadcast) for this core's members, but those of `exclude`.
    /// Returns how many links it was written to.
    pub fn publish(
        &mut self,
        biz_id: u64,
        to: Audience<'_>,
        message: &Rc<EncodedPush>,
        exclude: &[String],
        reliable: bool,
        now: Instant,
    ) -> usize {
        let conns: Vec<ConnId> = match to {
            Audience::Room(room) => self
                .rooms
                .get(&biz_id)
                .and_then(|r| r.get(room))
                .cloned()
                .unwrap_or_default(),
            Audience::Biz => self
                .users
                .get(&biz_id)
                .map(|users| users.values().flatten().copied().collect())
                .unwrap_or_default(),
        };
        let mut sent = 0;
        for conn in conns {
            let link = &self.links[&conn];
            if exclude.iter().any(|u| **u == *link.who.user_id) {
                continue;
            }
            if reliable {
                self.deliver(conn, message.clone(), None, now, now, None);
            } else if !self.best_effort(conn, message) {
                self.metrics.room_dropped.inc();
                continue;
            }
            sent += 1;
        }
        self.metrics.room_sent.add(sent as u64);
        sent
    }

    /// Ephemeral pushes: best effort, as room messages are.
    pub(super) fn send_ephemeral(&mut self, conns: &[ConnId], push: &EncodedPush) {
        if conns.is_empty() {
            self.metrics.ephemeral_dropped.inc();
        }
        for conn in conns {
            if self.best_effort(*conn, push) {
                self.metrics.ephemeral_sent.inc();
            } else {
                self.metrics.ephemeral_dropped.inc();
            }
        }
    }

    /// Writes a best-effort message (DESIGN §4a): no seq, so a dropped one is never a false
    /// gap, no ack, and never onto a queue the socket is not taking (over a quarter of the
    /// outbound cap) or ahead of CONNECTED. False when dropped.
    fn best_effort(&mut self, conn: ConnId, message: &EncodedPush) -> bool {
        let backlogged = self.cfg.max_outbound_bytes / 4;
        let link = self.links.get_mut(&conn).expect("indexed link exists");
        if link.out.len() > backlogged || link.opening.is_some() {
            return false;
        }
        link.send_push(message, 0, None, false);
        self.metrics.frame_out(Cmd::Downstream);
        true
    }

    /// A room's members on this core: links, and distinct users.
    pub fn room_members(&self, biz_id: u64, room: &str) -> (usize, usize) {
        let Some(members) = self.rooms.get(&biz_id).and_then(|r| r.get(room)) else {
            return (0, 0);
        };
        let mut users: Vec<&str> = members
            .iter()
            .map(|c| &*self.links[c].who.user_id)
            .collect();
        users.sort_unstable();
        users.dedup();
        (members.len(), users.len())
    }
}
