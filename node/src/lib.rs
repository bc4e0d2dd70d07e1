//! The Cairn server: versioning, redb storage, the engine that applies writes with group commit,
//! the QUIC service clients talk to, and the RESP, HTTP and metrics front ends.

pub mod antientropy;
pub mod cleanup;
pub mod config;
pub mod driver;
pub mod engine;
pub mod forwards;
pub mod frontend;
pub mod handoff;
pub mod layout;
pub mod limits;
pub mod membership;
pub mod metrics;
pub mod peers;
pub mod reaper;
pub mod replies;
pub mod server;
pub mod store;
mod tasks;
pub mod transfer;
pub mod trees;

// Versioning and coordination live in the pure core crate; these paths keep working.
pub use cairn_core::{coordinator, version};
pub use config::{ClusterConfig, ConfigError, FrontendConfig, NodeConfig, TlsPaths};
pub use frontend::FrontendAddrs;
pub use server::{Node, NodeError};
