//! One worker core: its shard of links (pure, with the timer wheel of `link`), and the glommio shell
//! that moves bytes between sockets and the shard.

pub mod admission;
pub mod alarm;
pub mod batcher;
pub mod conn;
pub mod deadlines;
pub mod embedded;
pub mod inbox;
pub mod links;
pub mod naps;
pub mod readiness;
pub mod services;
pub mod shard;
pub mod stream;
pub mod tally;
pub mod tls;
pub mod worker;
