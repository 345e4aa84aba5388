//! Running as a fleet: admission, etcd registration, where users are, push routing between
//! nodes, drain and rebalance. Pure rules (`admission::Ramp`, `nodes`) are tested alone; the
//! rest are shells on the control thread.

pub mod drain;
pub mod location;
pub mod mover;
pub mod nodes;
pub mod orphans;
pub mod rebalance;
pub mod registry;
pub mod routing;
