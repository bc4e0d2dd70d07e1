//! Scuttlebutt membership and phi-accrual failure detection (pure, no I/O).
//!
//! Empty until the membership issue builds it; the crate exists so the workspace has the design's
//! shape and the architecture-invariant test already guards its dependency list.
