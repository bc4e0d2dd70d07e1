//! The partition ring: fixed equal partitions, ownership claims and preference lists (pure, no I/O).
//!
//! Empty until the replicated-data-path issue builds it; the crate exists so the workspace has the
//! design's shape and the architecture-invariant test already guards its dependency list.
