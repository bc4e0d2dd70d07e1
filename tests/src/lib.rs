//! Shared helpers for Cairn's integration tests.
