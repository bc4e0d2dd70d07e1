//! The cluster CA and mutual-TLS QUIC endpoints: only holders of a certificate signed by the
//! cluster's CA get a connection, in either direction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use cairn_proto::{Role, ALPN};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::limits::{
    CERT_VALIDITY_DAYS, CONNECTION_RECEIVE_WINDOW_BYTES, IDLE_TIMEOUT, KEEP_ALIVE_INTERVAL,
    STREAMS_PER_CONNECTION_MAX,
};
use crate::socket::SocketClosed;
use crate::NetError;

/// The TLS server name every node certificate carries and every client asks for: a node proves it
/// is *a* node of this cluster (signed by its CA for server use), whatever address it is reached at.
pub const SERVER_NAME: &str = "cairn-node";

pub(crate) fn tls_err(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Tls {
        reason: format!("{what}: {e}"),
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A cluster certificate authority that signs node and client certificates.
pub struct ClusterCa {
    pem: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// Creates a new CA for the cluster called `cluster`.
    pub fn generate(cluster: &str) -> Result<ClusterCa, NetError> {
        let key = KeyPair::generate().map_err(|e| tls_err("generating CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("cairn cluster CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params);
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_err("self-signing CA", e))?;
        let pem = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(ClusterCa {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA written by [`ClusterCa::generate`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, NetError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| tls_err("reading CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| tls_err("reading CA certificate", e))?;
        Ok(ClusterCa {
            pem: Issued {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            issuer,
        })
    }

    /// The CA's certificate and key.
    pub fn pem(&self) -> &Issued {
        &self.pem
    }

    /// Signs a node certificate: usable as a server (for clients and peers) and as a client (when
    /// the node dials peers). `hosts` are extra DNS names or IP addresses to carry.
    pub fn issue_node(&self, name: &str, hosts: &[String]) -> Result<Issued, NetError> {
        let mut sans = vec![
            SERVER_NAME.to_owned(),
            name.to_owned(),
            "localhost".to_owned(),
        ];
        sans.extend(hosts.iter().cloned());
        let mut params = leaf_params(&format!("{NODE_CN_PREFIX}{name}"), &sans)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// Signs a data client certificate: it can get, put and delete, but neither change
    /// membership nor act as a node.
    pub fn issue_client(&self, name: &str) -> Result<Issued, NetError> {
        self.issue_client_as(name, Role::Data)
    }

    /// Signs an admin client certificate: what a data client may do, and membership changes.
    pub fn issue_admin(&self, name: &str) -> Result<Issued, NetError> {
        self.issue_client_as(name, Role::Admin)
    }

    /// Signs a client certificate of `role` (admin or data; nodes get [`ClusterCa::issue_node`]).
    pub fn issue_client_as(&self, name: &str, role: Role) -> Result<Issued, NetError> {
        let prefix = match role {
            Role::Admin => ADMIN_CN_PREFIX,
            Role::Data => DATA_CN_PREFIX,
            Role::Node => {
                return Err(tls_err(
                    "signing a client certificate",
                    "a node certificate comes from issue_node",
                ))
            }
        };
        let mut params = leaf_params(&format!("{prefix}{name}"), &[])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, NetError> {
        let key = KeyPair::generate().map_err(|e| tls_err("generating key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| tls_err("signing certificate", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams) {
    let now = rcgen::date_time_ymd(2024, 1, 1);
    params.not_before = now;
    params.not_after = now + std::time::Duration::from_secs(CERT_VALIDITY_DAYS as u64 * 86_400 * 2);
}

fn leaf_params(common_name: &str, sans: &[String]) -> Result<CertificateParams, NetError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params);
    let mut alt = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for s in sans {
        match s.parse::<IpAddr>() {
            Ok(ip) => alt.push(SanType::IpAddress(ip)),
            Err(_) => alt.push(SanType::DnsName(
                s.clone()
                    .try_into()
                    .map_err(|e| tls_err(&format!("name {s:?}"), e))?,
            )),
        }
    }
    params.subject_alt_names = alt;
    Ok(params)
}

/// What a node or client presents and trusts: the cluster CA, its own certificate and key.
#[derive(Clone)]
pub struct Identity {
    ca: CertificateDer<'static>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from PEM text.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Identity, NetError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| tls_err("reading CA certificate", e))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err("reading certificate", e))?;
        if chain.is_empty() {
            return Err(tls_err("reading certificate", "no certificate in PEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| tls_err("reading private key", e))?;
        Ok(Identity {
            ca,
            chain,
            key: Arc::new(key),
        })
    }

    /// Reads an identity from three PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, NetError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| tls_err(&format!("reading {}", p.display()), e))
        };
        Identity::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    pub(crate) fn roots(&self) -> Result<Arc<rustls::RootCertStore>, NetError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| tls_err("trusting CA certificate", e))?;
        Ok(Arc::new(roots))
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Result<Arc<quinn::TransportConfig>, NetError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.receive_window(CONNECTION_RECEIVE_WINDOW_BYTES.into());
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(|e| tls_err("idle timeout", e))?,
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    Ok(Arc::new(t))
}

/// The node's side of mutual TLS, for QUIC and the TCP front ends alike: its certificate,
/// TLS 1.3 only, and a client certificate signed by the cluster CA required of every peer;
/// `alpn` lists the application protocols offered (empty: none negotiated).
pub(crate) fn mutual_tls_server(
    id: &Identity,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, NetError> {
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
    Ok(tls)
}

fn server_config(id: &Identity) -> Result<quinn::ServerConfig, NetError> {
    let tls = mutual_tls_server(id, &[ALPN])?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC server config", e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport()?);
    Ok(cfg)
}

fn client_config(id: &Identity) -> Result<quinn::ClientConfig, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| tls_err("client certificate", e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| tls_err("QUIC client config", e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport()?);
    Ok(cfg)
}

/// A QUIC endpoint that serves on `addr` and accepts only peers with a certificate from the
/// cluster CA. It can also dial out (nodes talk to peers) with the same identity. The
/// [`SocketClosed`] resolves once its UDP socket is closed: after the endpoint, every clone of
/// it and every connection on it are gone.
pub fn server_endpoint(
    addr: SocketAddr,
    id: &Identity,
) -> Result<(quinn::Endpoint, SocketClosed), NetError> {
    let bind_err = |source| NetError::Bind { addr, source };
    let runtime = quinn::TokioRuntime;
    let (socket, closed) = crate::socket::bind(addr, &runtime).map_err(bind_err)?;
    let mut ep = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config(id)?),
        socket,
        Arc::new(runtime),
    )
    .map_err(bind_err)?;
    ep.set_default_client_config(client_config(id)?);
    Ok((ep, closed))
}

/// A client-only QUIC endpoint on an ephemeral local port of the family `for_addr` needs.
pub fn client_endpoint(id: &Identity, for_addr: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let bind: SocketAddr = match for_addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let bind_err = |source| NetError::Bind { addr: bind, source };
    // As quinn's `Endpoint::client`, over a socket with the node's buffer sizes.
    let socket = crate::socket::udp_socket(bind).map_err(bind_err)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)?;
    ep.set_default_client_config(client_config(id)?);
    Ok(ep)
}

/// Whether the peer of `conn` presented a node certificate, as opposed to a client
/// certificate: only nodes may send peer requests.
pub fn peer_is_node(conn: &quinn::Connection) -> bool {
    peer_role(conn) == Role::Node
}

/// The role the peer of `conn` holds, from its certificate (see [`certificate_role`]). A
/// connection without a readable certificate (never the case for a node's mutual TLS) holds
/// the least role, data.
pub fn peer_role(conn: &quinn::Connection) -> Role {
    peer_leaf(conn)
        .and_then(|cert| certificate_role(cert.as_ref()).ok())
        .unwrap_or(Role::Data)
}

/// The role a certificate from the cluster CA grants, for any front end that authenticates
/// clients with it (QUIC here; other protocols call the same function):
///
/// - node: extended key usage `serverAuth` and common name `cairn node NAME`;
/// - admin: common name `cairn admin NAME`, without `serverAuth`;
/// - data: anything else the CA signed (`cairn client NAME`, as every client certificate was
///   before roles existed), so an unknown form gets the least role.
///
/// The caller must have verified the certificate's chain to the cluster CA; this only reads
/// what the CA wrote. An unparseable certificate is an error.
pub fn certificate_role(der: &[u8]) -> Result<Role, NetError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| tls_err("reading certificate", e))?;
    let server = matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth);
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("");
    Ok(if server && cn.starts_with(NODE_CN_PREFIX) {
        Role::Node
    } else if !server && cn.starts_with(ADMIN_CN_PREFIX) {
        Role::Admin
    } else {
        Role::Data
    })
}

/// The node name in the peer's node certificate (its common name is `cairn node NAME`, as
/// [`ClusterCa::issue_node`] writes it), so a node can check that a peer speaks for itself;
/// `None` for client certificates and certificates of another shape.
pub fn peer_node_name(conn: &quinn::Connection) -> Option<String> {
    let leaf = peer_leaf(conn)?;
    if certificate_role(leaf.as_ref()).ok()? != Role::Node {
        return None;
    }
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    cn.strip_prefix(NODE_CN_PREFIX).map(str::to_owned)
}

/// What a node certificate's common name starts with; the node's name follows.
const NODE_CN_PREFIX: &str = "cairn node ";
/// What an admin client certificate's common name starts with.
const ADMIN_CN_PREFIX: &str = "cairn admin ";
/// What a data client certificate's common name starts with.
const DATA_CN_PREFIX: &str = "cairn client ";

fn peer_leaf(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

/// Whether a leaf certificate is a node's (its role, as [`certificate_role`] reads it).
pub(crate) fn cert_is_node(leaf: &CertificateDer<'_>) -> bool {
    matches!(certificate_role(leaf.as_ref()), Ok(Role::Node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role_of(issued: &Issued) -> Role {
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        certificate_role(der.as_ref()).unwrap()
    }

    #[test]
    fn certificates_carry_their_role() {
        let ca = ClusterCa::generate("t").unwrap();
        assert_eq!(role_of(&ca.issue_node("n1", &[]).unwrap()), Role::Node);
        assert_eq!(role_of(&ca.issue_admin("ops").unwrap()), Role::Admin);
        assert_eq!(role_of(&ca.issue_client("app").unwrap()), Role::Data);
        assert_eq!(
            role_of(&ca.issue_client_as("ops", Role::Admin).unwrap()),
            Role::Admin
        );
        assert!(ca.issue_client_as("n1", Role::Node).is_err());
        // A client certificate named like a node (or an admin, but for server use) is a data
        // client: each role needs both its name and its key usage.
        let sign = |cn: &str, eku: ExtendedKeyUsagePurpose| {
            let mut params = leaf_params(cn, &[]).unwrap();
            params.extended_key_usages = vec![eku];
            ca.sign(params).unwrap()
        };
        let client_auth = ExtendedKeyUsagePurpose::ClientAuth;
        assert_eq!(role_of(&sign("cairn node n1", client_auth)), Role::Data);
        let server_auth = ExtendedKeyUsagePurpose::ServerAuth;
        assert_eq!(role_of(&sign("cairn admin ops", server_auth)), Role::Data);
        assert!(certificate_role(b"not a certificate").is_err());
    }

    #[tokio::test]
    async fn a_server_endpoint_says_when_its_port_is_free() {
        let ca = ClusterCa::generate("t").unwrap();
        let node = ca.issue_node("n1", &[]).unwrap();
        let id = Identity::from_pem(&ca.pem().cert_pem, &node.cert_pem, &node.key_pem).unwrap();
        let (ep, closed) = server_endpoint("127.0.0.1:0".parse().unwrap(), &id).unwrap();
        let addr = ep.local_addr().unwrap();
        let clone = ep.clone();
        drop(ep);
        // A clone still holds the socket: not closed, the port still taken.
        let mut closed = Box::pin(closed.wait());
        let wait = std::time::Duration::from_millis(100);
        assert!(tokio::time::timeout(wait, &mut closed).await.is_err());
        assert!(std::net::UdpSocket::bind(addr).is_err());
        drop(clone);
        tokio::time::timeout(std::time::Duration::from_secs(10), closed)
            .await
            .expect("closed once the last handle is gone");
        std::net::UdpSocket::bind(addr).expect("the port is free once closed");
    }
}
