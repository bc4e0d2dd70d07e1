//! `cairn start`: one node from its config file, until SIGINT or SIGTERM, then a clean shutdown.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use cairn_node::{Node, NodeConfig};
use clap::Args;
use tracing_subscriber::EnvFilter;

use crate::signals::StopSignals;
use crate::Outcome;

/// What `cairn start` prints once the node serves (`node NAME listening on ADDR`); `cairn dev`
/// waits for it in the node's log before pinging.
pub const LISTENING: &str = " listening on ";

/// `cairn start`
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The node's config file (node.toml); relative paths in it are relative to its directory.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Runs the node until a stop signal; logs go to stderr (filter with RUST_LOG, default info).
pub async fn run(args: StartArgs) -> anyhow::Result<Outcome> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Caught before the node starts, so a signal during startup still ends in a clean shutdown.
    let mut signals = StopSignals::catch()?;
    let config = NodeConfig::load(&args.config)?;
    let name = config.name.clone();
    let listen = config.listen;
    let node = Node::start(config)
        .await
        .with_context(|| format!("node {name} could not start on {listen}"))?;
    println!("node {name}{LISTENING}{}", node.local_addr());
    let f = node.frontends();
    for (what, addr) in [
        ("resp", f.resp),
        ("resp plaintext", f.resp_plaintext),
        ("http", f.http),
        ("http plaintext", f.http_plaintext),
        ("metrics", f.metrics),
        ("metrics plaintext", f.metrics_plaintext),
    ] {
        if let Some(addr) = addr {
            println!("node {name} {what} on {addr}");
        }
    }
    let signal = signals.recv().await;
    tracing::info!(node = %name, "{signal}: shutting down");
    node.shutdown()
        .await
        .with_context(|| format!("node {name} did not shut down cleanly"))?;
    Ok(Outcome::Done)
}
