//! `cairn join` and `cairn leave`: change a node's membership, then show how the cluster looks
//! from it.

use std::time::Duration;

use cairn_proto::StatusReply;
use clap::Args;
use serde::Serialize;

use crate::limits::{JOIN_POLL_INTERVAL, JOIN_WAIT_DEFAULT};
use crate::target::{self, ClientArgs};
use crate::{Outcome, UsageError};

/// `cairn join`
#[derive(Debug, Args)]
#[command(after_help = "\
The node given by --node (required) gossips with SEED until it has learned the cluster, then
owns its share of the partitions. The command waits until the node sees a member other than
itself (at most --wait seconds) and prints its view; with --json one object:
{\"node\":..,\"joined\":true|false,\"members\":N}.")]
pub struct JoinArgs {
    /// Address (host:port) of any node of the cluster to join.
    pub seed: String,
    /// Seconds to wait for the node to hear from the cluster; 0 returns at once.
    #[arg(long, value_name = "SECS", default_value_t = JOIN_WAIT_DEFAULT.as_secs())]
    pub wait: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn leave`
#[derive(Debug, Args)]
#[command(after_help = "\
The node given by --node (required) declares itself leaving: every node drops it from the
ring, so it stops owning new writes; it keeps serving and forwarding requests. Its data is not
handed to the new owners yet: keep it running until anti-entropy has copied its keys. A restart
keeps it leaving; `cairn join` takes the leave back. With --json: {\"node\":..,\"status\":\"leaving\"}.")]
pub struct LeaveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Serialize)]
struct JoinJson<'a> {
    node: &'a str,
    joined: bool,
    members: usize,
}

#[derive(Serialize)]
struct LeaveJson<'a> {
    node: &'a str,
    status: &'a str,
}

fn require_node(args: &ClientArgs, command: &str) -> anyhow::Result<()> {
    if args.node.is_none() {
        return Err(UsageError(format!(
            "`cairn {command}` changes one node's membership: name it with --node NAME_OR_ADDR"
        ))
        .into());
    }
    Ok(())
}

/// Whether `status` shows the asked node in a cluster with others.
fn joined(status: &StatusReply) -> bool {
    status.members.iter().any(|m| !m.this_node)
        && status
            .members
            .iter()
            .any(|m| m.this_node && m.status == "up")
}

/// `cairn join SEED --node N`
pub async fn join(args: JoinArgs) -> anyhow::Result<Outcome> {
    require_node(&args.client, "join")?;
    let session = target::connect(&args.client.as_admin()).await?;
    let mut status = session
        .client
        .join(&args.seed)
        .await
        .map_err(|e| session.fail(e))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait);
    while !joined(&status) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(JOIN_POLL_INTERVAL).await;
        status = session.client.status().await.map_err(|e| session.fail(e))?;
    }
    session.close().await;
    let ok = joined(&status);
    if args.client.json {
        let json = JoinJson {
            node: &status.node,
            joined: ok,
            members: status.members.len(),
        };
        println!("{}", serde_json::to_string(&json)?);
    } else if ok {
        println!(
            "{} joined through {}: it sees {} members; `cairn status` shows them",
            status.node,
            args.seed,
            status.members.len()
        );
    } else if args.wait == 0 {
        println!("{} will join through {}", status.node, args.seed);
    } else {
        anyhow::bail!(
            "{} has not heard from {} within {} s; it keeps trying (check the address, and that both nodes trust the same CA)",
            status.node,
            args.seed,
            args.wait
        );
    }
    Ok(Outcome::Done)
}

/// `cairn leave --node N`
pub async fn leave(args: LeaveArgs) -> anyhow::Result<Outcome> {
    require_node(&args.client, "leave")?;
    let session = target::connect(&args.client.as_admin()).await?;
    let status = session.client.leave().await.map_err(|e| session.fail(e))?;
    session.close().await;
    if args.client.json {
        let json = LeaveJson {
            node: &status.node,
            status: "leaving",
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!(
            "{} is leaving: it owns no partitions from now on and takes no new writes as a replica",
            status.node
        );
    }
    Ok(Outcome::Done)
}
