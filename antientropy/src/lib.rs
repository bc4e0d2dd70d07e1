//! Merkle-tree anti-entropy: per-partition trees and the exchange session (pure, no I/O).
//!
//! Empty until the anti-entropy issue builds it; the crate exists so the workspace has the
//! design's shape and the architecture-invariant test already guards its dependency list.
