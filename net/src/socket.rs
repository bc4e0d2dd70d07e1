//! A node's UDP socket, as quinn's own, that says when it is closed: quinn closes it only
//! once the endpoint and every connection on it are gone, in its own driver task, so this is
//! how a node's shutdown knows its port is free again without polling.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::watch;

use crate::limits::UDP_SOCKET_BUFFER_BYTES;

/// Resolves once the socket it was made with is closed ([`SocketClosed::wait`]).
#[derive(Debug)]
pub struct SocketClosed(watch::Receiver<()>);

impl SocketClosed {
    /// Waits until the socket is closed and its port free.
    pub async fn wait(mut self) {
        // Nothing is ever sent: `changed` fails only once the socket's sender is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

/// Binds `addr` and wraps the socket for quinn's tokio runtime, watched.
pub(crate) fn bind(
    addr: SocketAddr,
    runtime: &quinn::TokioRuntime,
) -> io::Result<(Arc<dyn AsyncUdpSocket>, SocketClosed)> {
    let inner = runtime.wrap_udp_socket(udp_socket(addr)?)?;
    let (closed, watch) = watch::channel(());
    let socket: Arc<dyn AsyncUdpSocket> = Arc::new(Watched {
        inner,
        _closed: closed,
    });
    Ok((socket, SocketClosed(watch)))
}

/// A UDP socket bound to `addr` with buffers of `UDP_SOCKET_BUFFER_BYTES` asked for (what the
/// kernel grants is logged: it caps them at its own maximum).
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it, as quinn's own `Endpoint::client` binds.
        if let Err(e) = socket.set_only_v6(false) {
            tracing::debug!("UDP socket on {addr} stays IPv6-only: {e}");
        }
    }
    socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES)?;
    socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        "UDP socket on {addr}: receive buffer {} bytes, send buffer {} bytes (asked {UDP_SOCKET_BUFFER_BYTES})",
        socket.recv_buffer_size()?,
        socket.send_buffer_size()?
    );
    Ok(socket.into())
}

/// quinn's socket and the sender its watchers hear the close from.
#[derive(Debug)]
struct Watched {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Declared after `inner`, and fields drop in declaration order: when the watchers hear of
    /// it, the socket is closed (every poller holds this wrapper, not the inner socket alone).
    _closed: watch::Sender<()>,
}

impl AsyncUdpSocket for Watched {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WatchedPoller {
            inner: self.inner.clone().create_io_poller(),
            _socket: self,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// quinn's poller, holding the wrapper so the socket outlives it.
#[derive(Debug)]
struct WatchedPoller {
    inner: Pin<Box<dyn UdpPoller>>,
    _socket: Arc<Watched>,
}

impl UdpPoller for WatchedPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_writable(cx)
    }
}
