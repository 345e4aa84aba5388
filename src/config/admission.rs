//! How many links the node takes: its capacity, the ramp after a start, the per-address cap.

use std::time::{Duration, Instant};

use clap::Args;

use crate::core::admission::{Admission, Ramp};

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Admission")]
pub struct AdmissionArgs {
    /// Links this node takes at most (also advertised in etcd). The admission ramp grows up to
    /// it; past it, upgrades get 503 with a jittered Retry-After.
    #[arg(long, env = "RINGWAY_CAPACITY", default_value_t = 1_000_000)]
    pub capacity: u64,
    /// Links admitted right after start (default: --capacity, no ramp). A node restarted into
    /// a reconnect storm should start low.
    #[arg(long, env = "RINGWAY_ADMIT_INITIAL")]
    pub admit_initial: Option<u64>,
    /// How many more links the ramp admits every --admit-interval-ms.
    #[arg(long, env = "RINGWAY_ADMIT_STEP", default_value_t = 1_000)]
    pub admit_step: u64,
    /// How often the admission ramp takes its next step of --admit-step links.
    #[arg(long, env = "RINGWAY_ADMIT_INTERVAL_MS", default_value_t = 1_000)]
    pub admit_interval_ms: u64,
    /// TCP connections one client address may hold, counted from accept (a link is one; a
    /// handshake in progress is one too); IPv6 addresses count per /64. A connection over it is
    /// closed at accept without reading a byte (ringway_per_ip_closed_total). 0 = no cap. Mind
    /// NATs and load generators on one address.
    #[arg(long, env = "RINGWAY_MAX_LINKS_PER_IP", default_value_t = 0)]
    pub max_links_per_ip: u32,
}

impl AdmissionArgs {
    pub fn admission(&self) -> Admission {
        let ramp = Ramp {
            initial: self
                .admit_initial
                .unwrap_or(self.capacity)
                .min(self.capacity),
            step: self.admit_step,
            interval: Duration::from_millis(self.admit_interval_ms.max(1)),
            capacity: self.capacity,
        };
        Admission::new(ramp, self.max_links_per_ip, Instant::now())
    }
}
