//! TLS over TCP for the node's front ends (RESP, HTTP, metrics): the same cluster CA and mutual
//! authentication as QUIC, so only holders of a certificate the cluster signed get a connection.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use crate::tls::{cert_is_node, provider, tls_err};
use crate::{Identity, NetError};

/// A rustls server configuration for a TCP front end: the node's certificate, TLS 1.3, and a
/// client certificate signed by the cluster CA required of every client. `alpn` lists the
/// application protocols offered (empty: none negotiated).
pub fn tcp_server_config(
    id: &Identity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, NetError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(id.roots()?, provider())
            .build()
            .map_err(|e| tls_err("client verifier", e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| tls_err("node certificate", e))?;
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(tls))
}

/// Whether the leaf of a verified TCP client's chain is a node certificate (one signed for server
/// use) rather than a client certificate.
pub fn chain_is_node(chain: &[CertificateDer<'_>]) -> bool {
    chain.first().is_some_and(cert_is_node)
}
