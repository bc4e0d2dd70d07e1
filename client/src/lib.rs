//! The Cairn client library: one mutual-TLS QUIC connection to a node, one stream per request.
//!
//! Shared by the `cairn` CLI, the benchmark and the integration tests, so all of them exercise the
//! path an application would.

use std::net::SocketAddr;
use std::time::Duration;

use cairn_net::{Identity, NetError};
pub mod bench;

use cairn_proto::{
    check_request, Context, ErrorReply, GetReply, LayoutChangeReply, LimitError, ReadOptions,
    Request, Response, RingReply, StatusReply, WriteOptions,
};

/// How long a connection attempt (QUIC + TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take before the client gives up, unless the caller sets another.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request breaks a size limit; it was not sent.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The node answered with an error.
    #[error(transparent)]
    Node(ErrorReply),
    /// The transport failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No answer in time; a write may or may not have been applied.
    #[error("no answer from {addr} within {after:?}; a write may or may not have been applied")]
    Timeout {
        /// The node.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The node answered with a response that does not fit the request (a bug on one side).
    #[error("unexpected response from {addr}: {response}")]
    Unexpected {
        /// The node.
        addr: SocketAddr,
        /// What it sent.
        response: String,
    },
}

/// A connection to one node.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    addr: SocketAddr,
    timeout: Duration,
}

impl Client {
    /// Connects to the node at `addr`, presenting `identity`.
    pub async fn connect(addr: SocketAddr, identity: &Identity) -> Result<Client, ClientError> {
        let endpoint = cairn_net::client_endpoint(identity, addr)?;
        let connecting = endpoint
            .connect(addr, cairn_net::SERVER_NAME)
            .map_err(|e| NetError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(NetError::Connect {
                    addr,
                    reason: e.to_string(),
                }
                .into())
            }
            Err(_) => {
                return Err(NetError::Connect {
                    addr,
                    reason: format!(
                        "no handshake within {CONNECT_TIMEOUT:?} (is the node running?)"
                    ),
                }
                .into())
            }
        };
        Ok(Client {
            endpoint,
            conn,
            addr,
            timeout: REQUEST_TIMEOUT_DEFAULT,
        })
    }

    /// Sets how long each request may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and waits for its response. Limits are checked before sending.
    pub async fn request(&self, req: &Request) -> Result<Response, ClientError> {
        check_request(req)?;
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(NetError::from)?;
            cairn_net::write_frame(&mut send, req).await?;
            // Finishing tells the node the request is complete; it fails only if the stream is
            // already gone, which the read below reports better.
            let _ = send.finish();
            let resp: Response = cairn_net::read_frame(&mut recv).await?;
            Ok::<_, ClientError>(resp)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(Response::Error(e))) => Err(ClientError::Node(e)),
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                addr: self.addr,
                after: self.timeout,
            }),
        }
    }

    fn unexpected(&self, resp: Response) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr,
            response: format!("{resp:?}"),
        }
    }

    /// Asks the node for its name.
    pub async fn ping(&self) -> Result<String, ClientError> {
        match self.request(&Request::Ping).await? {
            Response::Pong { node } => Ok(node),
            other => Err(self.unexpected(other)),
        }
    }

    /// Reads every sibling of `key`; no siblings means not found.
    pub async fn get(&self, key: &[u8], opts: &ReadOptions) -> Result<GetReply, ClientError> {
        let req = Request::Get {
            key: key.to_vec(),
            opts: opts.clone(),
        };
        match self.request(&req).await? {
            Response::Value(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// Writes `value`, superseding what `context` saw; returns the key's siblings after the write
    /// (the new value and any concurrent ones) with the context covering exactly those.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: &Context,
        opts: &WriteOptions,
    ) -> Result<GetReply, ClientError> {
        let req = Request::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.clone(),
            opts: opts.clone(),
        };
        match self.request(&req).await? {
            Response::Written(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// Deletes what `context` saw (writes a tombstone); returns what the key holds afterwards
    /// (no siblings, unless concurrent writes survived the delete).
    pub async fn delete(
        &self,
        key: &[u8],
        context: &Context,
        opts: &WriteOptions,
    ) -> Result<GetReply, ClientError> {
        let req = Request::Delete {
            key: key.to_vec(),
            context: context.clone(),
            opts: opts.clone(),
        };
        match self.request(&req).await? {
            Response::Written(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// The node's view of the cluster.
    pub async fn status(&self) -> Result<StatusReply, ClientError> {
        match self.request(&Request::Status).await? {
            Response::Status(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// Asks the node to join the cluster `seed` belongs to: it takes the seed's layout and adds
    /// itself to it. Answers with the plan (with `dry_run`, only the plan).
    pub async fn join(&self, seed: &str, dry_run: bool) -> Result<LayoutChangeReply, ClientError> {
        self.layout_change(&Request::Join {
            seed: seed.to_owned(),
            dry_run,
        })
        .await
    }

    /// Asks the node to take itself out of the layout. Answers with the plan.
    pub async fn leave(&self, dry_run: bool) -> Result<LayoutChangeReply, ClientError> {
        self.layout_change(&Request::Leave { dry_run }).await
    }

    /// Asks the node to take the dead node `node` out of the layout. Answers with the plan.
    pub async fn remove(
        &self,
        node: &str,
        dry_run: bool,
    ) -> Result<LayoutChangeReply, ClientError> {
        self.layout_change(&Request::Remove {
            node: node.to_owned(),
            dry_run,
        })
        .await
    }

    /// Asks the node to give the dead node `old`'s partitions to the fresh node `new`. Answers
    /// with the plan.
    pub async fn replace(
        &self,
        old: &str,
        new: &str,
        dry_run: bool,
    ) -> Result<LayoutChangeReply, ClientError> {
        self.layout_change(&Request::Replace {
            old: old.to_owned(),
            new: new.to_owned(),
            dry_run,
        })
        .await
    }

    /// Asks the node to stop waiting for `node` in the layout change in flight (the operator's
    /// override, which may lose what only `node` held). Answers with the node's status.
    pub async fn layout_force(&self, node: &str) -> Result<StatusReply, ClientError> {
        match self
            .request(&Request::LayoutForce {
                node: node.to_owned(),
            })
            .await?
        {
            Response::Status(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    async fn layout_change(&self, req: &Request) -> Result<LayoutChangeReply, ClientError> {
        match self.request(req).await? {
            Response::LayoutChange(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// The partition ring as the node sees it.
    pub async fn ring(&self) -> Result<RingReply, ClientError> {
        match self.request(&Request::Ring).await? {
            Response::Ring(reply) => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// Closes the connection and waits for the close to reach the node.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}
