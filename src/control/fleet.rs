//! What a node knows of the fleet, and the pure rules that pick from it: where to redirect
//! links, how many to move on a scale-up. The etcd shell keeps the view current.

use std::collections::BTreeMap;

use crate::proto::{Node, NodeState};
use crate::protocol::json;

/// A node as registered under `{prefix}/nodes/{id}`: the wire contract's `Node` in the
/// canonical proto3 JSON mapping ([`NodeRecord::to_json`]), so a client that decodes the record
/// as the documented `Node` reads it, and operators can read it with `etcdctl get --prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub ip: String,
    pub port: u16,
    /// Share of new links this node should get; 0 while draining.
    pub weight: u32,
    pub capacity: u64,
    /// Open links.
    pub load: u64,
    pub labels: Vec<String>,
    pub location: String,
    pub state: RecordState,
    /// Milliseconds since the epoch at first registration: later nodes are the "new" ones of a
    /// scale-up.
    pub started_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    Active,
    Draining,
}

impl NodeRecord {
    /// Takes new links: active, weighted and below capacity.
    pub fn is_open(&self) -> bool {
        self.state == RecordState::Active && self.weight > 0 && self.load < self.capacity
    }

    pub fn to_proto(&self) -> Node {
        Node {
            id: self.id.clone(),
            ip: self.ip.clone(),
            port: self.port.into(),
            weight: self.weight,
            capacity: self.capacity,
            load: self.load,
            labels: self.labels.clone(),
            location: self.location.clone(),
            state: match self.state {
                RecordState::Active => NodeState::Serving,
                RecordState::Draining => NodeState::Draining,
            } as i32,
            started_ms: self.started_ms,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        json::encode_node(&self.to_proto(), &mut out);
        out
    }

    /// Reads a record; one whose state is neither serving nor draining is not a live node's.
    pub fn from_json(bytes: &[u8]) -> Result<NodeRecord, String> {
        let n = json::decode_node(bytes).map_err(|e| e.0)?;
        let state = match NodeState::try_from(n.state) {
            Ok(NodeState::Serving) => RecordState::Active,
            Ok(NodeState::Draining) => RecordState::Draining,
            _ => return Err(format!("state {} is not a live node's", n.state)),
        };
        Ok(NodeRecord {
            port: u16::try_from(n.port).map_err(|_| format!("port {} out of range", n.port))?,
            id: n.id,
            ip: n.ip,
            weight: n.weight,
            capacity: n.capacity,
            load: n.load,
            labels: n.labels,
            location: n.location,
            state,
            started_ms: n.started_ms,
        })
    }
}

/// The live nodes, by id, as last seen in etcd (this node included).
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub nodes: BTreeMap<String, NodeRecord>,
}

impl Fleet {
    /// The partitions of a topic the fleet shares that `me` reads: partition p goes to the
    /// serving node at p mod n in id order. Every node computes the same split from the same
    /// view; a node that is not serving (draining, not registered yet) reads none.
    pub fn share(&self, me: &str, partitions: &[i32]) -> Vec<i32> {
        let serving: Vec<&str> = self
            .nodes
            .values()
            .filter(|r| r.state == RecordState::Active)
            .map(|r| r.id.as_str())
            .collect();
        let Some(i) = serving.iter().position(|id| *id == me) else {
            return Vec::new();
        };
        partitions
            .iter()
            .copied()
            .filter(|p| p.unsigned_abs() as usize % serving.len() == i)
            .collect()
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.nodes.contains_key(id)
    }

    /// Where links leaving `me` should go: the open nodes other than `me`, least loaded
    /// (relative to capacity) first, at most `max`. Empty when no node can take them.
    pub fn redirect_targets(&self, me: &str, max: usize) -> Vec<Node> {
        let mut open: Vec<&NodeRecord> = self
            .nodes
            .values()
            .filter(|n| n.id != me && n.is_open())
            .collect();
        // load/capacity compared without division: a.load * b.cap vs b.load * a.cap.
        open.sort_by(|a, b| {
            (u128::from(a.load) * u128::from(b.capacity))
                .cmp(&(u128::from(b.load) * u128::from(a.capacity)))
                .then_with(|| a.id.cmp(&b.id))
        });
        open.into_iter()
            .take(max)
            .map(NodeRecord::to_proto)
            .collect()
    }

    /// The open nodes that registered after `me`: the targets of a scale-up rebalance.
    pub fn newer_than(&self, me: &str) -> Vec<&NodeRecord> {
        let Some(mine) = self.nodes.get(me) else {
            return Vec::new();
        };
        self.nodes
            .values()
            .filter(|n| n.id != me && n.is_open())
            .filter(|n| (n.started_ms, &n.id) > (mine.started_ms, &mine.id))
            .collect()
    }
}

/// Links an old node moves when `k` of `n` nodes are new: it keeps its share of the old
/// fleet, `m(n−k)/n`, and redirects the rest.
pub fn rebalance_count(m: u64, n: u64, k: u64) -> u64 {
    if n == 0 || k == 0 || k >= n {
        return 0;
    }
    m - m * (n - k) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, load: u64, capacity: u64, state: RecordState, started_ms: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            ip: "127.0.0.1".into(),
            port: 8080,
            weight: if state == RecordState::Active { 100 } else { 0 },
            capacity,
            load,
            labels: vec![],
            location: String::new(),
            state,
            started_ms,
        }
    }

    fn fleet(recs: Vec<NodeRecord>) -> Fleet {
        Fleet {
            nodes: recs.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    #[test]
    fn serving_nodes_split_a_shared_topic_and_every_partition_has_one_reader() {
        let parts: Vec<i32> = (0..5).collect();
        let f = fleet(vec![
            rec("a", 0, 10, RecordState::Active, 1),
            rec("b", 0, 10, RecordState::Draining, 1),
            rec("c", 0, 10, RecordState::Active, 1),
        ]);
        assert_eq!(f.share("a", &parts), [0, 2, 4]);
        assert_eq!(f.share("c", &parts), [1, 3]);
        assert!(
            f.share("b", &parts).is_empty(),
            "a draining node reads nothing"
        );
        assert!(
            f.share("new", &parts).is_empty(),
            "nor one not registered yet"
        );
        let alone = fleet(vec![rec("a", 0, 10, RecordState::Active, 1)]);
        assert_eq!(alone.share("a", &[0]), [0]);
    }

    #[test]
    fn the_record_is_node_in_proto3_json_and_reads_back() {
        let mut r = rec("gw-1", 3, 1000, RecordState::Draining, 1_700_000_000_000);
        r.labels = vec!["rack-a".into()];
        let json = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"id":"gw-1","ip":"127.0.0.1","port":8080,"capacity":"1000","load":"3","labels":["rack-a"],"state":"NODE_STATE_DRAINING","startedMs":"1700000000000"}"#
        );
        assert_eq!(NodeRecord::from_json(json.as_bytes()).unwrap(), r);
        // Any proto3 JSON writer's spelling is read too.
        let other = r#"{"id":"gw-2","ip":"10.0.0.2","port":8080,"weight":100,"capacity":10,"load":0,"state":"NODE_STATE_SERVING","started_ms":5}"#;
        assert_eq!(
            NodeRecord::from_json(other.as_bytes()).unwrap().state,
            RecordState::Active
        );
        let starting = r#"{"id":"gw-3","state":"NODE_STATE_STARTING"}"#;
        assert!(NodeRecord::from_json(starting.as_bytes()).is_err());
    }

    #[test]
    fn redirect_targets_skip_self_draining_and_full_nodes_least_loaded_first() {
        let f = fleet(vec![
            rec("a", 10, 100, RecordState::Active, 1),
            rec("b", 50, 100, RecordState::Active, 1),
            rec("c", 5, 10, RecordState::Active, 1), // 50% of a small node
            rec("d", 0, 100, RecordState::Draining, 1),
            rec("e", 100, 100, RecordState::Active, 1), // full
            rec("f", 20, 400, RecordState::Active, 1),  // 5%
        ]);
        let ids: Vec<String> = f
            .redirect_targets("a", 10)
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, ["f", "b", "c"]);
        let ids: Vec<String> = f
            .redirect_targets("f", 2)
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(
            fleet(vec![rec("a", 1, 10, RecordState::Active, 1)])
                .redirect_targets("a", 3)
                .is_empty()
        );
    }

    #[test]
    fn newer_nodes_are_those_registered_later_and_open() {
        let f = fleet(vec![
            rec("a", 10, 100, RecordState::Active, 1),
            rec("b", 10, 100, RecordState::Active, 5),
            rec("c", 0, 100, RecordState::Active, 9),
            rec("d", 0, 100, RecordState::Draining, 9),
        ]);
        let ids: Vec<&str> = f.newer_than("b").iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["c"]);
        assert_eq!(f.newer_than("a").len(), 2);
        assert!(f.newer_than("c").is_empty());
        assert!(f.newer_than("unknown").is_empty());
    }

    #[test]
    fn rebalance_moves_the_new_nodes_share() {
        // 2 old nodes + 1 new: each old node keeps 2/3 of its links.
        assert_eq!(rebalance_count(900, 3, 1), 300);
        assert_eq!(rebalance_count(1000, 4, 2), 500);
        assert_eq!(rebalance_count(7, 3, 1), 3); // rounds toward moving: 7 - 14/3
        assert_eq!(rebalance_count(100, 3, 0), 0);
        assert_eq!(rebalance_count(100, 1, 1), 0);
        assert_eq!(rebalance_count(0, 3, 1), 0);
    }
}
