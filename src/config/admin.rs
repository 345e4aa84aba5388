//! Who may drive the admin API, and how long its connections may idle.

use clap::Args;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Admin API")]
pub struct AdminArgs {
    /// Bearer token required on admin POST endpoints (push, kick, redirect), when set; compared
    /// in constant time.
    #[arg(long, env = "RINGWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Comma-separated Origin values whose pages may call the admin API. Any other request
    /// that carries an Origin header gets 403, so no web page can drive the API from a
    /// browser; by default only the admin server's own origin (its demo page) passes.
    /// Requests without an Origin (curl, backends) are unaffected.
    #[arg(long, env = "RINGWAY_ADMIN_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub admin_allowed_origins: Vec<String>,
    /// How long an admin connection may take to send a request head, and may sit idle
    /// between requests, before it is closed.
    #[arg(long, env = "RINGWAY_ADMIN_IDLE_TIMEOUT_MS", default_value_t = 10_000)]
    pub admin_idle_timeout_ms: u64,
    /// Refuse an HTTP push with 503 and Retry-After while its owner core is behind: messages
    /// wait in its inbox and the last push it took had waited there longer than this. Keeps
    /// push latency bounded at saturation instead of queueing up to --core-inbox messages;
    /// the caller retries (the refused users are listed as "rejected"). Pushes read from
    /// Kafka are never refused: they wait. 0 turns this off (only a full inbox refuses).
    #[arg(long, env = "RINGWAY_PUSH_SHED_MS", default_value_t = 50)]
    pub push_shed_ms: u64,
    /// Let the admin server mint client tokens for its demo page (POST /demo/token). For
    /// trying ringway out only: anyone who reaches the admin port can then sign in as anyone.
    #[arg(long, env = "RINGWAY_DEMO")]
    pub demo: bool,
}
