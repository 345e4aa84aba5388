//! The client wire contract, pure: WebSocket framing, the upgrade request, frame codecs.

pub mod arena;
pub mod body_crypt;
pub mod codec;
pub mod deflate;
pub mod events;
pub mod handshake;
pub mod http;
pub mod json;
pub mod ws;

pub use codec::Codec;
