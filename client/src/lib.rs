//! The Cairn client library.
