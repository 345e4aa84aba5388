//! The process's allocator (mimalloc, set as global in `main.rs`): its settings that a
//! gateway's memory depends on.

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h; the bindings name
/// only some of the options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed after a burst (a connect storm's handshakes, a backlog drained) goes back to
/// the system at once. mimalloc's default is to wait 10 ms and then do it on the next call
/// into the allocator, which a node at rest never makes: after opening 15,000 links a node
/// kept 40 to 100 bytes per link more, by chance of timing (bench/RESULTS.md). Handshakes per
/// core-second did not move. `MIMALLOC_PURGE_DELAY` in the environment still wins.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads it on later frees.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}
