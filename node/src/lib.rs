//! The Cairn server: versioning, redb storage, the engine that applies writes with group commit,
//! and the QUIC service clients talk to.

pub mod antientropy;
pub mod config;
pub mod driver;
pub mod engine;
pub mod handoff;
pub mod limits;
pub mod membership;
pub mod peers;
pub mod server;
pub mod store;
pub mod trees;

// Versioning and coordination live in the pure core crate; these paths keep working.
pub use cairn_core::{coordinator, version};
pub use config::{ClusterConfig, ConfigError, NodeConfig, TlsPaths};
pub use server::{Node, NodeError};
