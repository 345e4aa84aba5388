//! What a core answers itself, without the control thread: idempotency claims in its own
//! store, its users' streams, and upstream messages of the bizs served by the built-in
//! loopback backend.

use std::collections::HashMap;
use std::sync::Arc;

use super::stream::Streams;
use crate::link::idem::MemoryIdemStore;

/// Which bizs the cores serve locally; shared read-only by every core.
#[derive(Debug, Clone, Default)]
pub struct LocalBizs {
    default_local: bool,
    overrides: HashMap<u64, bool>,
}

impl LocalBizs {
    /// `default_local`: bizs with no route of their own are served locally; `overrides`: the
    /// bizs whose route says otherwise.
    pub fn new(default_local: bool, overrides: HashMap<u64, bool>) -> LocalBizs {
        LocalBizs {
            default_local,
            overrides,
        }
    }

    pub fn is_local(&self, biz_id: u64) -> bool {
        self.overrides
            .get(&biz_id)
            .copied()
            .unwrap_or(self.default_local)
    }

    pub fn all_local(&self) -> bool {
        self.default_local && self.overrides.values().all(|l| *l)
    }
}

/// What a node does with upstream messages while its shared idempotency store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreDownPolicy {
    /// Claim in the owner core's local store: messages keep flowing; retries that reach the same
    /// node are still deduplicated, retries through another node may reach the backend twice.
    Local,
    /// Answer ERROR(CODE_BACKEND_UNAVAILABLE): nothing reaches the backend without a shared claim.
    Refuse,
}

/// The shard's own services.
pub struct Embedded {
    /// The core's store: the only one, or, with a shared store, the fallback under
    /// [`StoreDownPolicy::Local`] and a local copy of replies.
    pub store: MemoryIdemStore,
    /// With a shared store (Redis): what to do while it is unreachable. Without one, every
    /// claim is made in `store` at once.
    pub shared_store: Option<StoreDownPolicy>,
    pub local_bizs: Arc<LocalBizs>,
    /// The loopback backend pushes each body back to its sender.
    pub echo: bool,
    /// The users' streams, for the users this core owns.
    pub streams: StreamStore,
}

/// Where a core's users' streams are kept.
pub enum StreamStore {
    /// In the core's memory, answered at once; lost on restart (a new epoch).
    Local(Streams),
    /// In Redis, through the control thread: appends and reads leave as events, and the
    /// answers come back to the shard later.
    Shared,
}
