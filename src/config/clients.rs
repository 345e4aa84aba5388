//! Who may open a link: token keys and claims, browser origins, the handshake's deadline.

use std::path::PathBuf;

use clap::Args;
use rand::TryRngCore;
use tracing::warn;

use crate::auth::{self, Identity, KeyError, KeySource, Verifier};
use crate::control::startup::StartError;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Clients and tokens")]
pub struct ClientArgs {
    /// HS256 secret for client JWTs (at least 16 bytes). Without it and without
    /// --jwt-public-key, a random secret is made at start and logged with a sample token.
    #[arg(long, env = "RINGWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 (RSA key) or ES256 (EC P-256 key) client JWTs.
    #[arg(long, env = "RINGWAY_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "RINGWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, env = "RINGWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Comma-separated Origin values browsers may connect from; empty allows any. Requests
    /// without an Origin header (non-browser clients) are always allowed.
    #[arg(long, env = "RINGWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Time a new connection has to send its upgrade request (408 after).
    #[arg(long, env = "RINGWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// How long a link may outlive its token's `exp` (a client's clock skew, a refresh in
    /// flight). At the deadline the link gets ERROR(CODE_TOKEN_EXPIRED) and close 4005, unless
    /// a REFRESH with a newer token came first.
    #[arg(long, env = "RINGWAY_TOKEN_GRACE_MS", default_value_t = 0)]
    pub token_grace_ms: u64,
}

impl ClientArgs {
    /// The key tokens are checked with. With neither a secret nor a public key, a fresh random
    /// development secret per process, shown once with a sample token: no shared key is ever
    /// built in.
    pub fn key_source(&self) -> Result<KeySource, StartError> {
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(s), _) => Ok(KeySource::Secret(s.as_bytes().to_vec())),
            (None, Some(path)) => Ok(KeySource::PublicKeyPem(std::fs::read(path).map_err(
                |source| StartError::Read {
                    path: path.clone(),
                    source,
                },
            )?)),
            (None, None) => {
                let mut raw = [0u8; 24];
                rand::rngs::OsRng
                    .try_fill_bytes(&mut raw)
                    .map_err(|e| StartError::Os {
                        what: "reading random bytes for a development secret",
                        source: std::io::Error::other(e),
                    })?;
                let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                let who = Identity {
                    biz_id: 1,
                    user_id: "demo".into(),
                    device_id: "default".into(),
                };
                let sample = auth::mint_hs256(secret.as_bytes(), &who, 86_400);
                warn!(
                    jwt_secret = %secret,
                    sample_token = %sample,
                    "no --jwt-secret or --jwt-public-key: using a random development secret; \
                     mint tokens with `ringway token --jwt-secret <secret> --user <id>`"
                );
                Ok(KeySource::Secret(secret.into_bytes()))
            }
        }
    }

    pub fn verifier(&self, source: &KeySource) -> Result<Verifier, KeyError> {
        Verifier::new(
            source,
            self.jwt_issuer.as_deref(),
            self.jwt_audience.as_deref(),
        )
    }

    /// The browser origins allowed to open links (empty: any).
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect()
    }
}
