//! The Cairn server: versioning, redb storage, the engine that applies writes with group commit,
//! and the QUIC service clients talk to.

pub mod config;
pub mod engine;
pub mod limits;
pub mod server;
pub mod store;
pub mod version;

pub use config::{ConfigError, NodeConfig, TlsPaths};
pub use server::{Node, NodeError};
