//! The `cairn` command: certificates, a local dev cluster, one production node, and the client
//! commands (`put`, `get`, `delete`, `ping`, `status`, `ring`, `bench`).
//!
//! Exit codes: 0 success, 1 not found (`get` of a key with no value), 2 usage error (including
//! options a node refuses, such as R above N), 3 any other failure (one line on stderr saying what
//! happened and what to do).

mod admin;
mod bench;
mod cert;
mod cluster;
mod dev;
mod kv;
mod limits;
mod membership;
mod render;
mod signals;
mod start;
mod target;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cairn: a leaderless, eventually consistent key-value store.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    max_term_width = 100,
    after_help = "\
Start a local cluster with `cairn dev`, then `cairn put k v` and `cairn get k` in another shell.
Exit status: 0 ok, 1 not found, 2 usage error, 3 any other failure (one line on stderr)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a value.
    ///
    /// Without a context the write is "blind": it becomes a sibling of whatever the key holds.
    /// With the context from a `get` it replaces exactly the siblings that get saw.
    Put(kv::PutArgs),
    /// Read every sibling of a key and the context that covers them.
    Get(kv::GetArgs),
    /// Delete what a context saw, or else what the key holds now (writes a tombstone).
    Delete(kv::DeleteArgs),
    /// Check that nodes answer: every node of the cluster directory, or the one given by --node.
    Ping(kv::PingArgs),
    /// Members of the cluster: reachability, partitions owned, hints not yet delivered.
    ///
    /// Asks one node (--node, or the first that answers) for its view; every member that answers
    /// is also asked for its own count of undelivered hints.
    Status(admin::StatusArgs),
    /// The partition ring: each partition's primary replicas and fallbacks.
    Ring(admin::RingArgs),
    /// Make a running node join the cluster of a seed node: it is added to the layout.
    Join(membership::JoinArgs),
    /// Take a running node out of the layout: its partitions go to other nodes.
    Leave(membership::LeaveArgs),
    /// Take a dead node out of the layout: its replicas are rebuilt from the survivors.
    Remove(membership::RemoveArgs),
    /// Give a dead node's partitions to a fresh node.
    Replace(membership::ReplaceArgs),
    /// Operator overrides of the layout change in flight.
    #[command(subcommand)]
    Layout(membership::LayoutCommand),
    /// Load the cluster with reads and writes; report throughput and latency percentiles.
    ///
    /// Workers are spread over every node of the cluster directory (one connection per node),
    /// or all go to --node.
    Bench(bench::BenchArgs),
    /// Run a local cluster until Ctrl-C.
    ///
    /// Certificates, configs and data live under one directory and are reused by the next run;
    /// each node is a child process (`cairn start`) with its pid in DIR/nodeK/pid and its output
    /// in DIR/nodeK/node.log.
    Dev(dev::DevArgs),
    /// Run one node from its configuration file until SIGINT or SIGTERM.
    Start(start::StartArgs),
    /// Create the cluster CA and the node and client certificates it signs.
    #[command(subcommand)]
    Cert(cert::CertCommand),
}

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// It did what was asked.
    Done,
    /// The key holds no value (exit 1).
    NotFound,
}

/// Exit code for a key with no value.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code for a usage error (clap uses it for its own).
const EXIT_USAGE: u8 = 2;
/// Exit code for any failure other than not found and usage errors.
const EXIT_FAILURE: u8 = 3;

/// A usage error found after parsing (by the CLI or by a node that refused the request's
/// options): printed as one line, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Put(args) => kv::put(args).await,
        Command::Get(args) => kv::get(args).await,
        Command::Delete(args) => kv::delete(args).await,
        Command::Ping(args) => kv::ping(args).await,
        Command::Status(args) => admin::status(args).await,
        Command::Ring(args) => admin::ring(args).await,
        Command::Join(args) => membership::join(args).await,
        Command::Leave(args) => membership::leave(args).await,
        Command::Remove(args) => membership::remove(args).await,
        Command::Replace(args) => membership::replace(args).await,
        Command::Layout(membership::LayoutCommand::Force(args)) => membership::force(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Dev(args) => dev::run(args).await,
        Command::Start(args) => start::run(args).await,
        Command::Cert(cmd) => cert::run(cmd),
    }
}

/// The error chain on one line, each cause once: some errors print their source in their own
/// message as well as returning it from `source()`.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stray blocking tasks (e.g. a stdin read) once the command is done.
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound) => ExitCode::from(EXIT_NOT_FOUND),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            match e.downcast_ref::<UsageError>() {
                Some(_) => ExitCode::from(EXIT_USAGE),
                None => ExitCode::from(EXIT_FAILURE),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_print_on_one_line() {
        let e = anyhow::anyhow!("inner\nsecond line").context("outer");
        assert_eq!(one_line(&e), "outer: inner second line");
        let io = std::io::Error::other("in use");
        let e = anyhow::Error::new(io).context("cannot bind: in use");
        assert_eq!(one_line(&e), "cannot bind: in use");
    }

    #[test]
    fn client_flags_go_before_or_after_positionals() {
        for argv in [
            &["cairn", "get", "k", "--json", "--node", "node1"][..],
            &["cairn", "get", "--json", "--node", "node1", "k"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Get(args) = cli.command else {
                panic!("not get")
            };
            assert_eq!(args.key, "k");
            assert!(args.client.json);
            assert_eq!(args.client.node.as_deref(), Some("node1"));
        }
    }

    #[test]
    fn value_and_file_together_is_a_usage_error() {
        let err = Cli::try_parse_from(["cairn", "put", "k", "v", "--file", "f"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
