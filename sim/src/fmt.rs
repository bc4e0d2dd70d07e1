//! Short text forms of objects, dots and contexts for the simulator's trace and failure reports.

use cairn_core::version::{Dot, Object, Payload, VClock};
use cairn_proto::{ActorId, GetReply, NodeId};

/// Most nodes a simulated cluster has (names `node1..`).
pub const NODES_MAX: usize = 8;

/// The name of node index `ix`, as configured.
pub fn node_name(ix: usize) -> String {
    format!("node{}", ix + 1)
}

/// `n3` for the actor of node3 (a simulated node keeps its epoch: it never loses its disk).
pub fn actor(a: &ActorId) -> String {
    node(a.node)
}

/// `n3` for node3's id.
pub fn node(id: NodeId) -> String {
    (0..NODES_MAX)
        .find(|&i| NodeId::from_name(&node_name(i)) == id)
        .map_or_else(|| id.to_string(), |i| format!("n{}", i + 1))
}

/// `n3:17`.
pub fn dot(d: Dot) -> String {
    format!("{}:{}", actor(&d.actor), d.counter)
}

/// A value (`c1w7`) or `DEL`.
pub fn payload(p: &Payload) -> String {
    match p {
        Payload::Value(v) => String::from_utf8_lossy(v).into_owned(),
        Payload::Tombstone => "DEL".into(),
    }
}

/// `{n1:4,n2:9}`.
pub fn vclock(vv: &VClock) -> String {
    let parts: Vec<String> = vv
        .dots
        .iter()
        .map(|(a, c)| format!("{}:{c}", actor(a)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// `[c1w3@n1:5 DEL@n2:9]{n1:5,n2:9}`: siblings, then the causal context.
pub fn obj(o: &Object) -> String {
    let sibs: Vec<String> = o
        .siblings()
        .into_iter()
        .map(|(d, p)| format!("{}@{}", payload(p), dot(d)))
        .collect();
    format!("[{}]{}", sibs.join(" "), vclock(&o.join()))
}

/// `[c1w3@n1:5]{n1:5,n2:9}`: a reply's live siblings, then its context.
pub fn reply(r: &GetReply) -> String {
    let sibs: Vec<String> = r
        .siblings
        .iter()
        .map(|s| {
            let d = Dot::new(s.dot.actor, s.dot.counter);
            format!("{}@{}", String::from_utf8_lossy(&s.value), dot(d))
        })
        .collect();
    let ctx = cairn_core::version::decode_context(&r.context)
        .map_or_else(|e| format!("<{e}>"), |vv| vclock(&vv));
    format!("[{}]{ctx}", sibs.join(" "))
}
