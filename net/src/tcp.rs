//! TLS over TCP for the node's front ends (RESP, HTTP, metrics): the same cluster CA and mutual
//! authentication as QUIC, so only holders of a certificate the cluster signed get a connection.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::tls::{cert_is_node, mutual_tls_server};
use crate::{Identity, NetError};

/// A rustls server configuration for a TCP front end: the node's certificate, TLS 1.3, and a
/// client certificate signed by the cluster CA required of every client. `alpn` lists the
/// application protocols offered (empty: none negotiated).
pub fn tcp_server_config(
    id: &Identity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, NetError> {
    Ok(Arc::new(mutual_tls_server(id, alpn)?))
}

/// Whether the leaf of a verified TCP client's chain is a node certificate (one signed for server
/// use) rather than a client certificate.
pub fn chain_is_node(chain: &[CertificateDer<'_>]) -> bool {
    chain.first().is_some_and(cert_is_node)
}
