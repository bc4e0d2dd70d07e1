//! Scuttlebutt membership and phi-accrual failure detection (pure, no I/O).
//!
//! Every node owns a small state — address, status, zone, opaque ring information, load and a
//! heartbeat — that only it writes. Each write takes the next value of one per-node version
//! counter, and each start of the node takes a higher *generation*, which supersedes everything
//! known about earlier ones (Cassandra's `(generation, version)`).
//!
//! Nodes reconcile by scuttlebutt (van Renesse et al., "Efficient Reconciliation and Flow Control
//! for Anti-Entropy Protocols"), push-pull in three messages as in Cassandra and chitchat:
//!
//! 1. **SYN**: the initiator's digest, per node `(generation, max version)`.
//! 2. **ACK**: the receiver's deltas — every write the initiator's digest shows it lacks — and a
//!    request naming the nodes the initiator is ahead on.
//! 3. **ACK2**: the initiator's deltas for that request.
//!
//! Every message fits the configured byte budget (its postcard encoding). A node's writes are
//! sent in version order and a cut list is always a prefix (the *prefix rule*), so a receiver
//! never holds a gap: holding version `v` of a node means holding all of its writes up to `v`,
//! and one number per node says what a peer lacks. When the budget cannot fit everything, the
//! nodes with the most writes to send go first (*scuttle-depth*).
//!
//! Heartbeats moving feed one phi-accrual detector per node ([`ArrivalWindow`]), with Cassandra's
//! exponential model and its guard against convicting everyone after a local pause. Nodes that
//! left are gossiped for a while, then dropped behind a tombstone so stale gossip cannot bring
//! them back. Seeds bootstrap a node and, contacted now and then, merge views a partition split.
//!
//! The state machine follows quinn-proto: inputs are [`Gossip::handle_tick`] and
//! [`Gossip::handle_message`], outputs [`Gossip::poll_transmit`] and [`Gossip::poll_event`].
//!
//! # Driving it
//!
//! - Start with [`Gossip::new`] and a generation above every earlier one of this node, persisted
//!   before the first message goes out.
//! - Call [`Gossip::handle_tick`] at [`Gossip::poll_timeout`] (every `gossip_interval`).
//! - Send every [`Transmit`] from [`Gossip::poll_transmit`], [`GossipMessage::encode`]d: a SYN to
//!   [`Destination::Seed`] goes to that address, one to [`Destination::Node`] to the address in
//!   the node's [`NodeState`]. Every SYN is answered by exactly one ACK and an ACK by at most one
//!   ACK2, both addressed to the sender; carry the exchange on one bidirectional stream and send
//!   replies back on it (a joiner's address is not known before its ACK2).
//! - Hand every received message to [`GossipMessage::decode`] and then
//!   [`Gossip::handle_message`]; an error is the peer's fault: log it and drop the message.
//! - Apply [`MembershipEvent`]s from [`Gossip::poll_event`] to the ring and the routing view;
//!   [`Gossip::members`] is the whole picture at any time.
//!
//! Architecture invariant: this crate reads no clock, does no I/O and draws no ambient
//! randomness; time comes in as `now` and randomness as an injected RNG, so a seeded simulation
//! replays exactly.

mod config;
mod detector;
mod error;
mod gossip;
pub mod limits;
mod message;
mod state;
mod view;

pub use config::GossipConfig;
pub use detector::ArrivalWindow;
pub use error::GossipError;
pub use gossip::{Destination, Gossip, MembershipEvent, Transmit};
pub use message::{DigestEntry, Entry, GossipMessage, NodeDelta, Payload};
pub use state::{Key, NodeState, Status, Storage, Value};
pub use view::NodeView;
