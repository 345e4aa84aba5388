//! Where each biz's upstream messages go: the per-biz route map (`--route BIZ=TARGET`, the
//! default from `--backend`), overridden live by routes watched in etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tracing::{info, warn};

use super::grpc_backend::GrpcBackend;
use crate::core::embedded::LocalBizs;

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
        mut grpc: impl FnMut(&str) -> Result<Arc<GrpcBackend>, String>,
    ) -> Result<(Routes, LocalBizs), String> {
        let mut resolve = |t: &Target| -> Result<Route, String> {
            Ok(match t {
                Target::Loopback => Route::Loopback,
                Target::Kafka { topic, batched } => Route::Kafka {
                    topic: topic.clone(),
                    batched: *batched,
                },
                Target::Grpc(url) => Route::Grpc(grpc(url)?),
            })
        };
        let routes = Routes {
            default: resolve(default)?,
            by_biz: by_biz
                .iter()
                .map(|(b, t)| Ok((*b, resolve(t)?)))
                .collect::<Result<_, String>>()?,
        };
        let local = LocalBizs::new(
            *default == Target::Loopback,
            by_biz
                .iter()
                .map(|(b, t)| (*b, *t == Target::Loopback))
                .collect(),
        );
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

type GrpcFactory = Box<dyn Fn(&str) -> Result<GrpcBackend, String> + Send + Sync>;

/// The route map in force: the flags' routes with etcd's on top, swapped whole on each change.
/// gRPC clients are kept by URL across swaps, so a reroute keeps their connections and breakers.
pub struct LiveRoutes {
    default: Target,
    flags: Vec<(u64, Target)>,
    kafka_ok: bool,
    etcd: Mutex<Vec<(u64, Target)>>,
    current: RwLock<Arc<Routes>>,
    clients: Mutex<HashMap<String, Arc<GrpcBackend>>>,
    make_grpc: GrpcFactory,
}

impl LiveRoutes {
    /// Builds the flags' map; also returns which bizs the cores may answer themselves.
    pub fn new(
        default: Target,
        flags: Vec<(u64, Target)>,
        kafka_ok: bool,
        make_grpc: GrpcFactory,
    ) -> Result<(LiveRoutes, LocalBizs), String> {
        let live = LiveRoutes {
            default,
            flags,
            kafka_ok,
            etcd: Mutex::default(),
            current: RwLock::new(Arc::new(Routes {
                default: Route::Loopback,
                by_biz: HashMap::new(),
            })),
            clients: Mutex::default(),
            make_grpc,
        };
        let (routes, local) = live.build(&live.flags)?;
        if routes.uses_kafka() && !kafka_ok {
            return Err("a kafka: route needs --kafka".into());
        }
        *live.current.write().expect("routes lock") = Arc::new(routes);
        Ok((live, local))
    }

    pub fn get(&self) -> Arc<Routes> {
        self.current.read().expect("routes lock").clone()
    }

    pub fn etcd_routes(&self) -> Vec<(u64, Target)> {
        self.etcd.lock().expect("routes lock").clone()
    }

    /// Replaces etcd's routes; a map that cannot be built (a kafka route without --kafka, a bad
    /// URL) is refused whole and the old one stays.
    pub fn apply_etcd(&self, mut routes: Vec<(u64, Target)>) {
        routes.sort_by_key(|(b, _)| *b);
        let mut etcd = self.etcd.lock().expect("routes lock");
        if *etcd == routes {
            return;
        }
        let mut merged: Vec<(u64, Target)> = self
            .flags
            .iter()
            .filter(|(b, _)| !routes.iter().any(|(r, _)| r == b))
            .cloned()
            .collect();
        merged.extend(routes.iter().cloned());
        match self.build(&merged) {
            Ok((r, _)) if r.uses_kafka() && !self.kafka_ok => {
                warn!(
                    "etcd routes name a kafka: target but this node has no --kafka; kept the old map"
                );
            }
            Ok((r, _)) => {
                info!(routes = routes.len(), "applied the route map from etcd");
                *self.current.write().expect("routes lock") = Arc::new(r);
                *etcd = routes;
            }
            Err(e) => warn!(error = %e, "bad route map in etcd; kept the old map"),
        }
    }

    /// How many gRPC backends have their circuit breaker open now.
    pub fn open_breakers(&self) -> u64 {
        let clients = self.clients.lock().expect("routes lock");
        clients.values().filter(|c| c.breaker_open()).count() as u64
    }

    fn build(&self, by_biz: &[(u64, Target)]) -> Result<(Routes, LocalBizs), String> {
        let mut clients = self.clients.lock().expect("routes lock");
        Routes::build(&self.default, by_biz, |url| {
            if let Some(c) = clients.get(url) {
                return Ok(c.clone());
            }
            let c = Arc::new((self.make_grpc)(url)?);
            clients.insert(url.to_owned(), c.clone());
            Ok(c)
        })
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

    #[test]
    fn etcd_routes_override_the_flags_live_and_bad_maps_are_refused() {
        let kafka = |t: &str| Target::Kafka {
            topic: t.into(),
            batched: false,
        };
        let no_grpc: GrpcFactory = Box::new(|_| unreachable!("no grpc routes"));
        let (live, _) =
            LiveRoutes::new(Target::Loopback, vec![(7, kafka("up7"))], true, no_grpc).unwrap();
        assert!(matches!(live.get().get(7), Route::Kafka { .. }));
        live.apply_etcd(vec![(9, kafka("up9")), (7, Target::Loopback)]);
        assert!(matches!(live.get().get(7), Route::Loopback));
        assert!(matches!(live.get().get(9), Route::Kafka { .. }));
        assert_eq!(live.etcd_routes().len(), 2);
        live.apply_etcd(vec![]);
        assert!(matches!(live.get().get(7), Route::Kafka { .. }));
        assert!(matches!(live.get().get(9), Route::Loopback));

        let no_grpc: GrpcFactory = Box::new(|_| unreachable!("no grpc routes"));
        let (plain, _) = LiveRoutes::new(Target::Loopback, vec![], false, no_grpc).unwrap();
        plain.apply_etcd(vec![(3, kafka("up3"))]);
        assert!(
            matches!(plain.get().get(3), Route::Loopback),
            "no --kafka: refused"
        );
        assert!(plain.etcd_routes().is_empty());
    }
}
