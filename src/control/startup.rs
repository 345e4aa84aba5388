//! Why a node could not start: the one error `ringway serve` reports before it exits 1. Each
//! subsystem's own error type says what and where (flag, file, address); the services without
//! one (Redis, Kafka, gRPC routes) say it in their messages.

use std::path::PathBuf;

use super::listeners::BindError;
use crate::auth::KeyError;
use crate::core::tls::TlsError;
use crate::protocol::body_crypt::KeySpecError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    BodyKeys(#[from] KeySpecError),
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The process could not get what every node needs (threads, a runtime, signals).
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    /// A remote service or route that could not be set up, in that service's words.
    #[error("{0}")]
    Service(String),
}

impl From<String> for StartError {
    fn from(message: String) -> StartError {
        StartError::Service(message)
    }
}
