//! Durable storage: the redb file and its commit log. The `Store` trait, its batch types and the
//! in-memory store live in the pure core (`cairn_core::store`), so the simulator uses them too.

mod commit_log;
mod redb_store;

pub use cairn_core::store::{Batch, Hint, MemoryStore, NodeMeta, Store, StoreError};
pub use commit_log::Replayed;
pub use redb_store::{RedbStore, StoreClosed};
