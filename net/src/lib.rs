//! Cairn's QUIC transport: cluster certificates, mutual-TLS configs and async frame I/O.
