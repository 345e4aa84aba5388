//! Admission: how many links the node takes, and how fast that number grows after a start.
//!
//! A node that restarts under a fleet of reconnecting clients must not accept them all at once:
//! each handshake costs a JWT check and each link a share of memory and backend traffic. The
//! limit starts at `initial` and grows by `step` every `interval` up to `capacity`. Every
//! accepted socket holds a ticket until its link ends, so the limit is also the node's link cap.
//! A refused client gets `503` with a jittered `Retry-After`, spreading the retries out instead
//! of letting SYNs pile up in the kernel's backlog.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::FastMap;

/// The limit's schedule; pure, so it is tested by moving time by hand.
#[derive(Debug, Clone, Copy)]
pub struct Ramp {
    pub initial: u64,
    pub step: u64,
    pub interval: Duration,
    pub capacity: u64,
}

impl Ramp {
    pub fn limit(&self, since_start: Duration) -> u64 {
        let steps = since_start.as_millis() / self.interval.as_millis().max(1);
        let grown = u128::from(self.initial) + u128::from(self.step) * steps;
        grown.min(u128::from(self.capacity)) as u64
    }

    /// How long a refused client should wait: one to three ramp intervals (at least 1 s),
    /// spread by `jitter` in [0, 1).
    pub fn retry_after_s(&self, jitter: f64) -> u32 {
        let base = self.interval.as_secs_f64().max(1.0);
        (base * (1.0 + 2.0 * jitter)).ceil() as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The ramp's current limit is reached; retry after this many seconds.
    Full { retry_after_s: u32 },
    /// This address holds its share of links already.
    PerIp,
    /// The node is draining.
    Closed,
}

const IP_SHARDS: usize = 16;

/// The node-wide gate every worker core asks before it reads a handshake.
pub struct Admission {
    ramp: Ramp,
    started: Instant,
    held: AtomicU64,
    closed: AtomicBool,
    max_per_ip: u32,
    per_ip: [Mutex<FastMap<IpAddr, u32>>; IP_SHARDS],
    jitter: AtomicU64,
}

/// A held admission; dropping it gives the slot back.
pub struct Ticket {
    gate: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// `max_per_ip` 0 means no per-address cap.
    pub fn new(ramp: Ramp, max_per_ip: u32, now: Instant) -> Admission {
        Admission {
            ramp,
            started: now,
            held: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            max_per_ip,
            per_ip: std::array::from_fn(|_| Mutex::default()),
            jitter: AtomicU64::new(seed()),
        }
    }

    pub fn limit(&self, now: Instant) -> u64 {
        self.ramp.limit(now.saturating_duration_since(self.started))
    }

    pub fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }

    /// Refuses every new link from now on (drain).
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    pub fn try_admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let ip = cap_key(ip);
        if self.is_closed() {
            return Err(Refusal::Closed);
        }
        let limit = self.limit(now);
        if self.held.fetch_add(1, Relaxed) >= limit {
            self.held.fetch_sub(1, Relaxed);
            return Err(Refusal::Full {
                retry_after_s: self.ramp.retry_after_s(self.next_jitter()),
            });
        }
        if self.max_per_ip > 0 {
            let mut shard = self.ip_shard(&ip).lock().expect("admission lock");
            let n = shard.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(shard);
                self.held.fetch_sub(1, Relaxed);
                return Err(Refusal::PerIp);
            }
            *n += 1;
        }
        Ok(Ticket {
            gate: self.clone(),
            ip,
        })
    }

    fn ip_shard(&self, ip: &IpAddr) -> &Mutex<FastMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => u128::from(*v6) as usize,
        };
        &self.per_ip[h % IP_SHARDS]
    }

    /// A uniform value in [0, 1) from a shared xorshift: good enough to spread retries.
    fn next_jitter(&self) -> f64 {
        let mut x = self.jitter.load(Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ u64::from(std::process::id()) << 32) | 1
}

/// The address a per-address cap counts: IPv4 as it is, IPv6 by its /64 (one host or one
/// customer is given a whole /64, so counting single addresses would cap nothing).
fn cap_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let gate = &self.gate;
        if gate.max_per_ip > 0 {
            let mut shard = gate.ip_shard(&self.ip).lock().expect("admission lock");
            if let Some(n) = shard.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    shard.remove(&self.ip);
                }
            }
        }
        gate.held.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ramp() -> Ramp {
        Ramp {
            initial: 2,
            step: 3,
            interval: Duration::from_secs(2),
            capacity: 10,
        }
    }

    #[test]
    fn limit_ramps_by_step_per_interval_up_to_capacity() {
        let r = ramp();
        let at = |ms| r.limit(Duration::from_millis(ms));
        assert_eq!(at(0), 2);
        assert_eq!(at(1_999), 2);
        assert_eq!(at(2_000), 5);
        assert_eq!(at(4_000), 8);
        assert_eq!(at(6_000), 10);
        assert_eq!(at(60_000_000), 10);
    }

    #[test]
    fn retry_after_spans_one_to_three_intervals() {
        let r = ramp();
        assert_eq!(r.retry_after_s(0.0), 2);
        assert_eq!(r.retry_after_s(0.5), 4);
        assert_eq!(r.retry_after_s(0.999), 6);
        let fast = Ramp {
            interval: Duration::from_millis(100),
            ..r
        };
        assert_eq!(fast.retry_after_s(0.0), 1);
    }

    #[test]
    fn tickets_are_the_cap_and_dropping_one_frees_a_slot() {
        let t0 = Instant::now();
        let gate = Arc::new(Admission::new(ramp(), 0, t0));
        let a = gate.try_admit(IP, t0).unwrap();
        let _b = gate.try_admit(IP, t0).unwrap();
        assert!(matches!(
            gate.try_admit(IP, t0),
            Err(Refusal::Full {
                retry_after_s: 2..=6
            })
        ));
        assert_eq!(gate.held(), 2);
        drop(a);
        assert_eq!(gate.held(), 1);
        let _c = gate.try_admit(IP, t0).unwrap();
        // Two seconds later the ramp allows three more.
        let later = t0 + Duration::from_secs(2);
        let more: Vec<_> = (0..3).map(|_| gate.try_admit(IP, later).unwrap()).collect();
        assert!(gate.try_admit(IP, later).is_err());
        assert_eq!(gate.held(), 5);
        drop(more);
        assert_eq!(gate.held(), 2);
    }

    #[test]
    fn ipv6_is_capped_per_64() {
        let t0 = Instant::now();
        let open = Ramp {
            initial: 10,
            ..ramp()
        };
        let gate = Arc::new(Admission::new(open, 2, t0));
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = gate.try_admit(v6("2001:db8:1:2::1"), t0).unwrap();
        let _b = gate.try_admit(v6("2001:db8:1:2:ffff::9"), t0).unwrap();
        assert_eq!(
            gate.try_admit(v6("2001:db8:1:2::77"), t0).err(),
            Some(Refusal::PerIp),
            "same /64"
        );
        assert!(
            gate.try_admit(v6("2001:db8:1:3::1"), t0).is_ok(),
            "next /64"
        );
    }

    #[test]
    fn per_ip_cap_counts_each_address_alone() {
        let t0 = Instant::now();
        let wide = Ramp {
            initial: 100,
            ..ramp()
        };
        let gate = Arc::new(Admission::new(wide, 2, t0));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| gate.try_admit(IP, t0).unwrap()).collect();
        assert_eq!(gate.try_admit(IP, t0).err(), Some(Refusal::PerIp));
        let _o = gate.try_admit(other, t0).unwrap();
        assert_eq!(gate.held(), 3, "a refused attempt holds nothing");
        drop(held);
        let _again = gate.try_admit(IP, t0).unwrap();
    }

    #[test]
    fn closed_gate_refuses_everyone() {
        let t0 = Instant::now();
        let gate = Arc::new(Admission::new(ramp(), 0, t0));
        gate.close();
        assert_eq!(gate.try_admit(IP, t0).err(), Some(Refusal::Closed));
        assert_eq!(gate.held(), 0);
    }
}
