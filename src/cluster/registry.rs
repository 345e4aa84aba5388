//! etcd: this node's registration and its view of the fleet and of the route map.
//!
//! The node's record lives at `{prefix}/nodes/{id}` under a lease kept alive at a third of its
//! TTL; a change of load or state is written at the next report. Any failure (etcd down or
//! restarted, lease expired or lost with its data) ends the session: after a backoff the node
//! grants a new lease and registers again, so it never stays invisible once etcd is back. One
//! watch on the whole prefix keeps the fleet and the per-biz routes (`{prefix}/routes/{biz}` =
//! a `--route` target) current; it restarts from a fresh read with each session.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::control::Hub;
use crate::control::fleet::{NodeRecord, RecordState};
use crate::control::routes::{Target, parse_route};

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub report_every: Duration,
    /// The record as first registered; load, state and weight follow the node.
    pub record: NodeRecord,
}

/// The registry's handle: the drain asks it to leave the fleet.
pub struct Registry {
    cfg: EtcdConfig,
    leave: Notify,
    left: Notify,
}

enum SessionEnd {
    /// The node asked to deregister and its lease is revoked.
    Left,
    Failed(String),
}

impl Registry {
    pub fn new(cfg: EtcdConfig) -> Arc<Registry> {
        Arc::new(Registry {
            cfg,
            leave: Notify::new(),
            left: Notify::new(),
        })
    }

    /// Revokes the lease (the record disappears at once for every watcher) and stops
    /// registering; waits at most `timeout` for etcd to confirm.
    pub async fn deregister(&self, timeout: Duration) {
        let left = self.left.notified();
        self.leave.notify_one();
        if tokio::time::timeout(timeout, left).await.is_err() {
            warn!("etcd did not confirm the deregistration; the lease will expire on its own");
        }
    }

    /// Registers and re-registers until `deregister`.
    pub async fn run(self: Arc<Self>, node: Arc<Hub>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session(&node).await {
                SessionEnd::Left => {
                    self.left.notify_one();
                    return;
                }
                SessionEnd::Failed(e) => {
                    node.counters.etcd_errors.inc();
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "etcd session ended; registering again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.leave.notified() => {
                    self.left.notify_one();
                    return;
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.cfg.prefix)
    }

    fn current_record(&self, node: &Hub) -> NodeRecord {
        let draining = node.draining.load(Relaxed);
        NodeRecord {
            load: node.links().max(0) as u64,
            state: if draining {
                RecordState::Draining
            } else {
                RecordState::Active
            },
            weight: if draining { 0 } else { self.cfg.record.weight },
            ..self.cfg.record.clone()
        }
    }

    async fn session(&self, node: &Hub) -> SessionEnd {
        let fail = |what: &str, e: etcd_client::Error| SessionEnd::Failed(format!("{what}: {e}"));
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3));
        let mut client = match Client::connect(&self.cfg.endpoints, Some(opts)).await {
            Ok(c) => c,
            Err(e) => return fail("connect", e),
        };
        let ttl = self.cfg.lease_ttl.as_secs().max(1) as i64;
        let lease = match client.lease_grant(ttl, None).await {
            Ok(l) => l.id(),
            Err(e) => return fail("lease grant", e),
        };
        let key = self.node_key(&self.cfg.record.id);
        let mut written = self.current_record(node);
        let put = NodeRecord::to_json;
        if let Err(e) = client
            .put(
                key.as_str(),
                put(&written),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
        {
            return fail("register", e);
        }
        node.counters.etcd_registrations.inc();
        info!(key = %key, lease, "registered in etcd");
        let (mut keeper, mut acks) = match client.lease_keep_alive(lease).await {
            Ok(k) => k,
            Err(e) => return fail("keepalive", e),
        };
        let snapshot = match client
            .get(
                self.cfg.prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return fail("read fleet", e),
        };
        let rev = snapshot.header().map_or(0, |h| h.revision());
        {
            let mut view = View::default();
            for kv in snapshot.kvs() {
                view.put(&self.cfg.prefix, kv.key(), kv.value());
            }
            view.publish(node);
        }
        let mut watch = match client
            .watch(
                self.cfg.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
        {
            Ok(w) => w,
            Err(e) => return fail("watch", e),
        };
        let mut keepalive = tokio::time::interval(self.cfg.lease_ttl / 3);
        let mut report = tokio::time::interval(self.cfg.report_every);
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return fail("keepalive", e);
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    Ok(Some(_)) => return SessionEnd::Failed("lease expired".into()),
                    Ok(None) => return SessionEnd::Failed("keepalive stream closed".into()),
                    Err(e) => return fail("keepalive", e),
                },
                _ = report.tick() => {
                    let now = self.current_record(node);
                    if now != written {
                        if let Err(e) = client
                            .put(key.as_str(), put(&now), Some(PutOptions::new().with_lease(lease)))
                            .await
                        {
                            return fail("load report", e);
                        }
                        written = now;
                    }
                }
                msg = watch.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return SessionEnd::Failed("watch canceled".into());
                        }
                        let mut view = View::from_node(node);
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            match ev.event_type() {
                                EventType::Put => view.put(&self.cfg.prefix, kv.key(), kv.value()),
                                EventType::Delete => view.delete(&self.cfg.prefix, kv.key()),
                            }
                        }
                        view.publish(node);
                    }
                    Ok(None) => return SessionEnd::Failed("watch closed".into()),
                    Err(e) => return fail("watch", e),
                },
                _ = self.leave.notified() => {
                    let _ = client.lease_revoke(lease).await;
                    info!("deregistered from etcd");
                    return SessionEnd::Left;
                }
            }
        }
    }
}

/// A working copy of what etcd says, published to the node in one swap.
#[derive(Default)]
struct View {
    fleet: crate::control::fleet::Fleet,
    routes: Vec<(u64, Target)>,
}

impl View {
    fn from_node(node: &Hub) -> View {
        View {
            fleet: node.fleet.read().expect("fleet lock").clone(),
            routes: node.routes.etcd_routes(),
        }
    }

    fn put(&mut self, prefix: &str, key: &[u8], value: &[u8]) {
        let key = String::from_utf8_lossy(key);
        let Some(rest) = key.strip_prefix(prefix) else {
            return;
        };
        if let Some(id) = rest.strip_prefix("/nodes/") {
            match NodeRecord::from_json(value) {
                Ok(r) => {
                    self.fleet.nodes.insert(id.to_owned(), r);
                }
                Err(e) => warn!(key = %key, error = %e, "ignoring a node record that is not ours"),
            }
        } else if let Some(biz) = rest.strip_prefix("/routes/") {
            let spec = format!("{biz}={}", String::from_utf8_lossy(value));
            match parse_route(&spec) {
                Ok((biz, target)) => {
                    self.routes.retain(|(b, _)| *b != biz);
                    self.routes.push((biz, target));
                }
                Err(e) => warn!(key = %key, error = %e, "ignoring a bad route in etcd"),
            }
        }
    }

    fn delete(&mut self, prefix: &str, key: &[u8]) {
        let key = String::from_utf8_lossy(key);
        let Some(rest) = key.strip_prefix(prefix) else {
            return;
        };
        if let Some(id) = rest.strip_prefix("/nodes/") {
            self.fleet.nodes.remove(id);
        } else if let Some(biz) = rest
            .strip_prefix("/routes/")
            .and_then(|b| b.parse::<u64>().ok())
        {
            self.routes.retain(|(b, _)| *b != biz);
        }
    }

    fn publish(self, node: &Hub) {
        *node.fleet.write().expect("fleet lock") = self.fleet;
        node.routes.apply_etcd(self.routes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_follows_node_and_route_keys_and_ignores_the_rest() {
        let mut v = View::default();
        let rec = r#"{"id":"n1","ip":"10.0.0.1","port":8080,"weight":100,"capacity":"10","load":"3","state":"NODE_STATE_SERVING","startedMs":"5"}"#;
        v.put("/rw", b"/rw/nodes/n1", rec.as_bytes());
        v.put("/rw", b"/rw/nodes/n2", b"not json");
        v.put("/rw", b"/rw/routes/7", b"kafka:up7");
        v.put("/rw", b"/rw/routes/8", b"ftp://nope");
        v.put("/rw", b"/other/nodes/n3", rec.as_bytes());
        assert_eq!(v.fleet.nodes.keys().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(v.fleet.nodes["n1"].load, 3);
        assert_eq!(v.fleet.nodes["n1"].labels, Vec::<String>::new());
        assert_eq!(v.routes.len(), 1);
        v.put("/rw", b"/rw/routes/7", b"loopback");
        assert_eq!(v.routes, vec![(7, Target::Loopback)]);
        v.delete("/rw", b"/rw/routes/7");
        v.delete("/rw", b"/rw/nodes/n1");
        assert!(v.routes.is_empty() && v.fleet.nodes.is_empty());
    }
}
