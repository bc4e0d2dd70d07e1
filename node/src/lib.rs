//! The Cairn server.
