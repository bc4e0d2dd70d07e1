//! The flags every client command shares, and finding a node that answers: the one named by
//! `--node` (and no other: it is the coordinator the person chose), or the first node of the
//! cluster directory that does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use cairn_client::{Client, ClientError, REQUEST_TIMEOUT_DEFAULT};
use cairn_net::{Identity, NetError};
use cairn_proto::ErrorReply;
use clap::Args;

use crate::cluster::{self, NodeEntry, DEFAULT_DIR};
use crate::limits::REPLY_GRACE;
use crate::UsageError;

/// Flags shared by the client commands; accepted before or after the positionals.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Cluster directory: where node configs and the default certificates are.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DIR)]
    pub cluster: PathBuf,
    /// Node to talk to, which coordinates the request: a node name of the cluster directory (its
    /// node.toml says where it listens) or an address such as 127.0.0.1:7001. No other node is
    /// tried if it does not answer. Default: the first node that answers, node1 first.
    #[arg(long, value_name = "NAME_OR_ADDR")]
    pub node: Option<String>,
    /// Cluster CA certificate to trust [default: DIR/ca.pem].
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Client certificate, signed by the cluster CA [default: DIR/client/client.pem, or
    /// DIR/admin/admin.pem for layout changes].
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Client private key [default: DIR/client/client.key, or DIR/admin/admin.key for layout
    /// changes].
    #[arg(long = "key", id = "key_file", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Print one JSON object on one line instead of text. Values (and keys) that are not valid
    /// UTF-8 appear as {"base64":"..."} instead of a string.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for a connection, and for the replicas of a get, put or delete (the
    /// node is told, and answers in time with the replicas that failed) [default: the node's,
    /// 5 s; the client waits 10 s].
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
}

/// A number of seconds, more than 0 and at most a day.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl ClientArgs {
    /// How long to wait for a connection.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(REQUEST_TIMEOUT_DEFAULT)
    }

    /// The timeout the node is told (`timeout_ms` of a request's options), when --timeout is
    /// given.
    pub fn timeout_ms(&self) -> Option<u32> {
        self.timeout
            .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX))
    }

    /// How long to wait for each answer: a bit longer than the node was told to wait, so its own
    /// timeout error, which names the replicas that failed, arrives first.
    pub fn request_timeout(&self) -> Duration {
        match self.timeout {
            Some(t) => t + REPLY_GRACE,
            None => REQUEST_TIMEOUT_DEFAULT,
        }
    }

    /// These flags for a membership command: without --cert, the cluster directory's admin
    /// identity (DIR/admin/admin.pem and admin.key) instead of the data one.
    pub fn as_admin(&self) -> ClientArgs {
        let mut args = self.clone();
        if args.cert.is_none() && args.key_file.is_none() {
            args.cert = Some(cluster::admin_cert(&self.cluster));
            args.key_file = Some(cluster::admin_key(&self.cluster));
        }
        args
    }

    /// The client identity the flags name.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        let dir = &self.cluster;
        let ca = self.ca.clone().unwrap_or_else(|| cluster::ca_cert(dir));
        let cert = self
            .cert
            .clone()
            .unwrap_or_else(|| cluster::client_cert(dir));
        let key = self
            .key_file
            .clone()
            .unwrap_or_else(|| cluster::client_key(dir));
        Identity::load(&ca, &cert, &key).map_err(|e| {
            anyhow!(
                "cannot load the client identity: {e} (start a cluster with `cairn dev`, or pass --cluster DIR or --ca/--cert/--key)"
            )
        })
    }

    /// The nodes to try, in order.
    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        match &self.node {
            Some(node) => Ok(vec![self.resolve(node)?]),
            None => Ok(cluster::nodes(&self.cluster)?
                .into_iter()
                .map(Target::named)
                .collect()),
        }
    }

    fn resolve(&self, node: &str) -> anyhow::Result<Target> {
        if let Ok(addr) = node.parse::<SocketAddr>() {
            return Ok(Target {
                name: None,
                addr,
                from_cluster_dir: false,
            });
        }
        Ok(Target::named(cluster::node(&self.cluster, node)?))
    }
}

/// A node to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name, when it came from the cluster directory.
    pub name: Option<String>,
    /// Its address.
    pub addr: SocketAddr,
    /// Whether the cluster directory named it (then "start it with cairn dev" is good advice).
    from_cluster_dir: bool,
}

impl Target {
    /// A node at `addr` that is not from the cluster directory (e.g. a member a node listed).
    pub fn at(name: Option<String>, addr: SocketAddr) -> Target {
        Target {
            name,
            addr,
            from_cluster_dir: false,
        }
    }

    fn named(entry: NodeEntry) -> Target {
        Target {
            name: Some(entry.name),
            addr: entry.addr,
            from_cluster_dir: true,
        }
    }

    /// `node1 (127.0.0.1:7001)`, or the address alone.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.addr),
            None => self.addr.to_string(),
        }
    }

    /// `why` prefixed with who failed, without repeating the address it may already name.
    fn blame(&self, why: &str) -> String {
        let addr = self.addr.to_string();
        match (&self.name, why.contains(&addr)) {
            (Some(name), true) => format!("{name}: {why}"),
            (None, true) => why.to_owned(),
            (_, false) => format!("{}: {why}", self.label()),
        }
    }

    /// Connects, waiting at most `timeout`.
    pub async fn connect(
        &self,
        identity: &Identity,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let mut client =
            match tokio::time::timeout(timeout, Client::connect(self.addr, identity)).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(NetError::Connect {
                        addr: self.addr,
                        reason: format!("no handshake within {timeout:?}"),
                    }
                    .into())
                }
            };
        client.set_timeout(timeout);
        Ok(client)
    }

    /// Explains a failure to reach this node, with what to do about it.
    pub fn explain(&self, e: &ClientError) -> String {
        explain(e, self.from_cluster_dir)
    }
}

/// Whether the TLS handshake failed: the node refused our certificate, or we refused its.
pub fn is_tls_refusal(e: &ClientError) -> bool {
    match e {
        ClientError::Net(NetError::Connection(quinn::ConnectionError::TransportError(t))) => {
            is_crypto_code(t.code)
        }
        ClientError::Net(NetError::Connection(quinn::ConnectionError::ConnectionClosed(
            quinn::ConnectionClose { error_code, .. },
        ))) => is_crypto_code(*error_code),
        ClientError::Net(NetError::Connect { reason, .. }) => {
            reason.contains("handshake failed") || reason.contains("certificate")
        }
        _ => false,
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100 + alert.
fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    let code: u64 = code.into();
    (0x100..0x200).contains(&code)
}

fn explain(e: &ClientError, from_cluster_dir: bool) -> String {
    if is_tls_refusal(e) {
        return format!(
            "{e} (the TLS handshake failed: are --ca, --cert and --key from this cluster's CA?)"
        );
    }
    match e {
        ClientError::Net(NetError::Connect { .. }) if from_cluster_dir => {
            format!("{e} (is the cluster running? start it with `cairn dev`)")
        }
        ClientError::Net(NetError::Connect { reason, .. }) if !reason.contains("running?") => {
            format!("{e} (is a node running there?)")
        }
        _ => e.to_string(),
    }
}

/// A connection to one node, and which node it is.
pub struct Session {
    /// The connection.
    pub client: Client,
    /// The node.
    pub target: Target,
}

impl Session {
    /// A request's error as one line a person can act on; options the node refused (such as R
    /// above N) are a usage error.
    pub fn fail(&self, e: ClientError) -> anyhow::Error {
        match e {
            ClientError::Node(ErrorReply::BadOptions { .. }) => UsageError(e.to_string()).into(),
            e => anyhow!(self.target.explain(&e)),
        }
    }

    /// Closes the connection politely, without letting a slow close hold up the command.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.close()).await;
    }
}

/// A connection to the first target that answers a ping, tried in order; says nothing about the
/// ones that did not unless all fail.
///
/// The ping also makes a refused client certificate show up here: the TLS handshake completes on
/// the client's side before the node has checked the client's certificate, so a node that
/// refuses it closes the connection during the first request.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Session> {
    let identity = args.identity()?;
    let targets = args.targets()?;
    let timeout = args.timeout();
    let mut failures = Vec::new();
    for target in &targets {
        let mut client = match target.connect(&identity, timeout).await {
            Ok(client) => client,
            Err(e) => {
                failures.push((target, target.explain(&e)));
                continue;
            }
        };
        match client.ping().await {
            Ok(_) => {
                client.set_timeout(args.request_timeout());
                return Ok(Session {
                    client,
                    target: target.clone(),
                });
            }
            Err(e @ ClientError::Net(_)) => failures.push((
                target,
                format!(
                    "{e} (the node closed the connection right after the handshake: most likely it refused our client certificate; are --cert and --key signed by this cluster's CA?)"
                ),
            )),
            Err(e) => failures.push((target, target.explain(&e))),
        }
    }
    if let [(target, why)] = failures.as_slice() {
        return Err(anyhow!(target.blame(why)));
    }
    let (first, why) = failures
        .first()
        .context("the cluster directory lists no nodes")?;
    Err(anyhow!(
        "no node of cluster {} answers ({} tried); {}",
        args.cluster.display(),
        failures.len(),
        first.blame(why),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(parse_seconds("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_seconds("NaN").is_err());
    }

    #[test]
    fn connection_failures_say_what_to_do() {
        let e = ClientError::Net(NetError::Connect {
            addr: "127.0.0.1:7001".parse().unwrap(),
            reason: "no handshake within 5s".into(),
        });
        assert!(!is_tls_refusal(&e));
        assert_eq!(
            explain(&e, true),
            "cannot connect to 127.0.0.1:7001: no handshake within 5s (is the cluster running? start it with `cairn dev`)"
        );
        assert_eq!(
            explain(&e, false),
            "cannot connect to 127.0.0.1:7001: no handshake within 5s (is a node running there?)"
        );
    }
}
