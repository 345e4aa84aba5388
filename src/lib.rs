//! ringway: an IM WebSocket gateway, thread-per-core on io_uring.
//!
//! `protocol` and `link` hold the wire and link rules as pure code; `core` runs them on each
//! worker core; `control` is the node-wide side (admin API, routing pushes to owner cores).

/// The git commit this binary was built from (`unknown` outside a git checkout).
pub const GIT_SHA: &str = env!("RINGWAY_GIT_SHA");
/// What `--version` prints: the crate's version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("RINGWAY_GIT_SHA"),
    ")"
);

pub mod auth;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod metrics;
pub mod protocol;

/// Generated from `proto/ringway/gateway/v1/gateway.proto`: the client wire contract.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/ringway.gateway.v1.rs"));
}

/// Generated from `proto/ringway/backend/v1/backend.proto`: what business backends implement.
pub mod backend_proto {
    include!(concat!(env!("OUT_DIR"), "/ringway.backend.v1.rs"));
}

/// The hash map of per-core state. foldhash is several times faster than std's SipHash on the
/// short keys used here, and it is still seeded at random per map, so client-chosen keys (user
/// ids, message keys) cannot be crafted to collide.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Logs a start phase that took over two seconds: a node slow to come up then says which part
/// held it (a dependency slow to answer, starved cores), where otherwise only its admin port's
/// silence would show.
pub fn warn_if_slow(phase: &str, began: std::time::Instant) {
    let took = began.elapsed();
    if took > std::time::Duration::from_secs(2) {
        tracing::warn!(
            phase,
            took_ms = took.as_millis() as u64,
            "a start phase was slow"
        );
    }
}

/// The core that owns a user's links. Stable across processes and releases (FNV-1a), because
/// every node and the push router must agree on it.
pub fn owner_core(biz_id: u64, user_id: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in biz_id.to_le_bytes().iter().chain(user_id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

/// A push's receivers as a set: each user once, in first-named order, empty names dropped. A
/// user named twice (a group's member list with a repeat) gets the push once.
pub fn distinct_receivers(users: Vec<String>) -> Vec<String> {
    let mut seen: std::collections::HashSet<String, foldhash::fast::RandomState> =
        std::collections::HashSet::with_capacity_and_hasher(users.len(), Default::default());
    users
        .into_iter()
        .filter(|u| !u.is_empty() && seen.insert(u.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn receivers_are_named_once_in_order() {
        let users = ["b", "a", "b", "", "a", "c"].map(String::from).to_vec();
        assert_eq!(super::distinct_receivers(users), ["b", "a", "c"]);
    }
}
