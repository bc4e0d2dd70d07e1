//! The node's TCP front ends — the Redis protocol (`resp`), the HTTP JSON API and `/metrics`
//! (`http`) — and what they share: listeners that speak TLS with the cluster CA (or plaintext on
//! loopback only), a bound on connections, and the one authorization check every request passes.

pub mod http;
pub mod resp;

use std::net::SocketAddr;
use std::sync::Arc;

use cairn_net::{Identity, NetError};
use cairn_proto::{ErrorReply, Request};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{FrontendConfig, NodeConfig};
use crate::limits::{FRONTEND_CONNECTIONS_MAX, TLS_HANDSHAKE_TIMEOUT};
use crate::metrics::ConnectionGuard;
use crate::server::Shared;
use crate::tasks::Tasks;

/// Why a front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A listener's address could not be bound.
    #[error("cannot bind the {frontend} listener on TCP {addr}: {source}")]
    Bind {
        /// `resp`, `http` or `metrics`.
        frontend: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the node's certificates.
    #[error("{frontend} TLS: {source}")]
    Tls {
        /// `resp`, `http` or `metrics`.
        frontend: &'static str,
        /// What failed.
        source: NetError,
    },
}

/// Which front end a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The Redis protocol.
    Resp,
    /// The HTTP JSON API.
    Http,
    /// Prometheus metrics over HTTP.
    Metrics,
}

impl Kind {
    /// Its name in configs, logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Resp => "resp",
            Kind::Http => "http",
            Kind::Metrics => "metrics",
        }
    }
}

/// The addresses the front ends are bound to (port 0 in the config resolved to the real port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendAddrs {
    /// RESP over TLS.
    pub resp: Option<SocketAddr>,
    /// RESP in plaintext (loopback).
    pub resp_plaintext: Option<SocketAddr>,
    /// HTTP over TLS.
    pub http: Option<SocketAddr>,
    /// HTTP in plaintext (loopback).
    pub http_plaintext: Option<SocketAddr>,
    /// Metrics over TLS.
    pub metrics: Option<SocketAddr>,
    /// Metrics in plaintext (loopback).
    pub metrics_plaintext: Option<SocketAddr>,
}

/// A bound listener, not yet serving.
pub(crate) struct Listener {
    kind: Kind,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// Binds every configured listener; nothing serves until [`serve`]. Bound first, so a node whose
/// ports are taken fails to start instead of running without its front ends.
pub(crate) fn bind(
    config: &NodeConfig,
    identity: &Identity,
) -> Result<(Vec<Listener>, FrontendAddrs), FrontendError> {
    let mut listeners = Vec::new();
    let mut addrs = FrontendAddrs::default();
    for (kind, section) in [
        (Kind::Resp, &config.resp),
        (Kind::Http, &config.http),
        (Kind::Metrics, &config.metrics),
    ] {
        let (tls, plain) = bind_section(kind, section, identity, &mut listeners)?;
        let (t, p) = match kind {
            Kind::Resp => (&mut addrs.resp, &mut addrs.resp_plaintext),
            Kind::Http => (&mut addrs.http, &mut addrs.http_plaintext),
            Kind::Metrics => (&mut addrs.metrics, &mut addrs.metrics_plaintext),
        };
        *t = tls;
        *p = plain;
    }
    Ok((listeners, addrs))
}

type Bound = (Option<SocketAddr>, Option<SocketAddr>);

fn bind_section(
    kind: Kind,
    section: &FrontendConfig,
    identity: &Identity,
    listeners: &mut Vec<Listener>,
) -> Result<Bound, FrontendError> {
    let frontend = kind.name();
    let mut bound = (None, None);
    if let Some(addr) = section.listen {
        let alpn: &[&[u8]] = match kind {
            Kind::Resp => &[],
            Kind::Http | Kind::Metrics => &[b"http/1.1"],
        };
        let config = cairn_net::tcp_server_config(identity, alpn)
            .map_err(|source| FrontendError::Tls { frontend, source })?;
        let tcp = bind_tcp(frontend, addr)?;
        bound.0 = tcp.local_addr().ok();
        listeners.push(Listener {
            kind,
            tcp,
            tls: Some(TlsAcceptor::from(config)),
        });
    }
    if let Some(addr) = section.plaintext_listen {
        // Checked on load too; a config built in code must not bypass it.
        if !addr.ip().is_loopback() {
            return Err(FrontendError::Bind {
                frontend,
                addr,
                source: std::io::Error::other("a plaintext listener must be on a loopback address"),
            });
        }
        let tcp = bind_tcp(frontend, addr)?;
        bound.1 = tcp.local_addr().ok();
        listeners.push(Listener {
            kind,
            tcp,
            tls: None,
        });
    }
    Ok(bound)
}

fn bind_tcp(frontend: &'static str, addr: SocketAddr) -> Result<TcpListener, FrontendError> {
    let bind_err = |source| FrontendError::Bind {
        frontend,
        addr,
        source,
    };
    let std = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    std.set_nonblocking(true).map_err(bind_err)?;
    TcpListener::from_std(std).map_err(bind_err)
}

/// Serves every listener, each by a task among `tasks` that runs until the node stops; its
/// connections are tasks in its scope, so they end with it.
pub(crate) fn serve(listeners: Vec<Listener>, shared: Arc<Shared>, tasks: &Tasks) {
    for listener in listeners {
        let shared = shared.clone();
        let name = match listener.kind {
            Kind::Resp => "resp listener",
            Kind::Http => "http listener",
            Kind::Metrics => "metrics listener",
        };
        tasks.spawn_scoped(name, |scope| accept_loop(listener, shared, scope));
    }
}

/// Who is at the other end of a front-end connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientId {
    /// Its address.
    pub remote: SocketAddr,
    /// Its verified certificate chain, leaf first; `None` on a plaintext loopback listener.
    pub chain: Option<Vec<CertificateDer<'static>>>,
}

/// The one place a front-end request is allowed or refused, by the role its certificate carries
/// (`cairn_net::certificate_role`), as for QUIC. A local process on a plaintext loopback listener
/// holds the data role: it may get, put and delete, nothing more.
pub(crate) fn authorize(client: &ClientId, req: &Request) -> Result<(), ErrorReply> {
    let held = client
        .chain
        .as_deref()
        .and_then(|chain| chain.first())
        .and_then(|leaf| cairn_net::certificate_role(leaf.as_ref()).ok())
        .unwrap_or(cairn_net::Role::Data);
    let needed = req.role_needed();
    if held.permits(needed) {
        Ok(())
    } else {
        Err(ErrorReply::Forbidden {
            what: crate::server::request_name(req).to_owned(),
            needed,
            held,
        })
    }
}

impl ClientId {
    /// Whether the client presented a node certificate rather than a client certificate.
    pub fn is_node(&self) -> bool {
        self.chain.as_deref().is_some_and(cairn_net::chain_is_node)
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, connections: Tasks) {
    let frontend = listener.kind.name();
    let connection = match listener.kind {
        Kind::Resp => "resp connection",
        Kind::Http => "http connection",
        Kind::Metrics => "metrics connection",
    };
    let slots = Arc::new(Semaphore::new(FRONTEND_CONNECTIONS_MAX));
    loop {
        let (tcp, remote) = match listener.tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                warn!(frontend, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(frontend, %remote, "refusing connection: FRONTEND_CONNECTIONS_MAX ({FRONTEND_CONNECTIONS_MAX}) reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = listener.tls.clone();
        let kind = listener.kind;
        connections.spawn(connection, async move {
            let _open = ConnectionGuard::open(frontend);
            let (io, client): (Box<dyn IoObj>, ClientId) = match tls {
                None => (
                    Box::new(tcp),
                    ClientId {
                        remote,
                        chain: None,
                    },
                ),
                Some(tls) => match handshake(tls, tcp, remote).await {
                    Some(accepted) => accepted,
                    None => return,
                },
            };
            debug!(frontend, remote = %client.remote, tls = client.chain.is_some(), node_certificate = client.is_node(), "connection open");
            match kind {
                Kind::Resp => resp::serve(io, client, shared).await,
                Kind::Http => http::serve(io, client, shared, http::Api::Kv).await,
                Kind::Metrics => http::serve(io, client, shared, http::Api::Metrics).await,
            }
            drop(permit);
        });
    }
}

/// A connection's byte stream, TLS or plaintext, so both share one code path.
pub(crate) trait IoObj: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> IoObj for T {}

async fn handshake(
    tls: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> Option<(Box<dyn IoObj>, ClientId)> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
            Some((Box::new(stream), ClientId { remote, chain }))
        }
        // Most often a client without a certificate from the cluster CA.
        Ok(Err(e)) => {
            info!(%remote, "TLS handshake refused: {e}");
            None
        }
        Err(_) => {
            debug!(%remote, "TLS handshake timed out after {TLS_HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}
