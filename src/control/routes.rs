//! Where each biz's upstream messages go: the per-biz route map (`--route BIZ=TARGET`, the
//! default from `--backend`).

use std::collections::HashMap;
use std::sync::Arc;

use super::grpc_backend::GrpcBackend;

/// A route as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The built-in backend: accept at once (with `--echo`, push back to the sender).
    Loopback,
    /// `grpc://host:port`: BackendService.
    Grpc(String),
    /// `kafka:TOPIC` (one record per message) or `kafka-batch:TOPIC` (one record per batch);
    /// the client is acked after the broker's delivery report.
    Kafka { topic: String, batched: bool },
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        if s == "loopback" {
            Ok(Target::Loopback)
        } else if s.starts_with("grpc://") {
            Ok(Target::Grpc(s.to_owned()))
        } else if let Some(t) = s.strip_prefix("kafka:").filter(|t| !t.is_empty()) {
            Ok(Target::Kafka {
                topic: t.to_owned(),
                batched: false,
            })
        } else if let Some(t) = s.strip_prefix("kafka-batch:").filter(|t| !t.is_empty()) {
            Ok(Target::Kafka {
                topic: t.to_owned(),
                batched: true,
            })
        } else {
            Err(format!(
                "route target {s:?}: use loopback, grpc://host:port, kafka:TOPIC or kafka-batch:TOPIC"
            ))
        }
    }
}

/// Parses `BIZ=TARGET`.
pub fn parse_route(s: &str) -> Result<(u64, Target), String> {
    let (biz, target) = s
        .split_once('=')
        .ok_or_else(|| format!("route {s:?}: expected BIZ=TARGET"))?;
    let biz = biz
        .trim()
        .parse()
        .map_err(|_| format!("route {s:?}: biz must be a number"))?;
    Ok((biz, Target::parse(target.trim())?))
}

/// Which bizs the cores serve locally; shared read-only by every core.
#[derive(Debug, Clone, Default)]
pub struct LocalBizs {
    default_local: bool,
    overrides: HashMap<u64, bool>,
}

impl LocalBizs {
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

/// A resolved route on the control thread.
#[derive(Clone)]
pub enum Route {
    Loopback,
    Grpc(Arc<GrpcBackend>),
    Kafka { topic: String, batched: bool },
}

pub struct Routes {
    default: Route,
    by_biz: HashMap<u64, Route>,
}

impl Routes {
    /// Resolves targets, one gRPC client per distinct endpoint.
    pub fn build(
        default: &Target,
        by_biz: &[(u64, Target)],
        mut grpc: impl FnMut(&str) -> Result<GrpcBackend, String>,
    ) -> Result<(Routes, LocalBizs), String> {
        let mut clients: HashMap<String, Arc<GrpcBackend>> = HashMap::new();
        let mut resolve = |t: &Target| -> Result<Route, String> {
            Ok(match t {
                Target::Loopback => Route::Loopback,
                Target::Kafka { topic, batched } => Route::Kafka {
                    topic: topic.clone(),
                    batched: *batched,
                },
                Target::Grpc(url) => match clients.get(url) {
                    Some(c) => Route::Grpc(c.clone()),
                    None => {
                        let c = Arc::new(grpc(url)?);
                        clients.insert(url.clone(), c.clone());
                        Route::Grpc(c)
                    }
                },
            })
        };
        let routes = Routes {
            default: resolve(default)?,
            by_biz: by_biz
                .iter()
                .map(|(b, t)| Ok((*b, resolve(t)?)))
                .collect::<Result<_, String>>()?,
        };
        let local = LocalBizs {
            default_local: *default == Target::Loopback,
            overrides: by_biz
                .iter()
                .map(|(b, t)| (*b, *t == Target::Loopback))
                .collect(),
        };
        Ok((routes, local))
    }

    pub fn get(&self, biz_id: u64) -> &Route {
        self.by_biz.get(&biz_id).unwrap_or(&self.default)
    }

    pub fn uses_kafka(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.by_biz.values())
            .any(|r| matches!(r, Route::Kafka { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves_per_biz() {
        assert_eq!(
            parse_route("7=kafka:up7"),
            Ok((
                7,
                Target::Kafka {
                    topic: "up7".into(),
                    batched: false
                }
            ))
        );
        assert_eq!(
            parse_route("8 = kafka-batch:b"),
            Ok((
                8,
                Target::Kafka {
                    topic: "b".into(),
                    batched: true
                }
            ))
        );
        assert_eq!(parse_route("9=loopback"), Ok((9, Target::Loopback)));
        assert!(parse_route("x=loopback").is_err());
        assert!(parse_route("1=http://a").is_err());
        assert!(parse_route("1=kafka:").is_err());
        let (routes, local) = Routes::build(
            &Target::Loopback,
            &[(
                7,
                Target::Kafka {
                    topic: "up7".into(),
                    batched: false,
                },
            )],
            |_| unreachable!("no grpc routes"),
        )
        .unwrap();
        assert!(local.is_local(1) && !local.is_local(7) && !local.all_local());
        assert!(
            matches!(routes.get(7), Route::Kafka { .. })
                && matches!(routes.get(1), Route::Loopback)
        );
        assert!(routes.uses_kafka());
    }
}
