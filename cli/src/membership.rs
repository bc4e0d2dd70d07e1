//! `cairn join`, `cairn leave`, `cairn remove` and `cairn replace`: layout changes. The asked
//! node plans the change against the layout it holds and, unless `--dry-run`, applies it; the
//! plan (every partition whose replicas change) is printed either way.

use std::time::Duration;

use cairn_proto::{LayoutChangeReply, StatusReply};
use clap::Args;
use serde::Serialize;

use crate::limits::{JOIN_POLL_INTERVAL, JOIN_WAIT_DEFAULT};
use cairn_client::ClientError;

use crate::target::{self, ClientArgs};
use crate::{Outcome, UsageError};

/// `cairn join`
#[derive(Debug, Args)]
#[command(after_help = "\
The node given by --node (required) takes the layout of SEED's cluster and adds itself to it
(a new layout version, spread by gossip); it must hold no layout, or one of itself alone. The
plan is printed: each partition whose replicas change, from -> to. Without --dry-run the command
then waits until the node sees a member other than itself (at most --wait seconds). With --json
one object: the plan's fields (node, change, from_version, to_version, applied, moves, keys,
bytes) and joined, members.")]
pub struct JoinArgs {
    /// Address (host:port) of any node of the cluster to join.
    pub seed: String,
    /// Seconds to wait for the node to hear from the cluster; 0 returns at once.
    #[arg(long, value_name = "SECS", default_value_t = JOIN_WAIT_DEFAULT.as_secs())]
    pub wait: u64,
    /// Print the plan without applying it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn leave`
#[derive(Debug, Args)]
#[command(after_help = "\
The node given by --node (required) takes itself out of the layout: a new layout version gives
its partitions to other nodes, which receive its keys, and it is `left` once no live layout
version has it. Until the transfer is done the new version stays in transition (`cairn status`)
and the node keeps its partitions. With --json the plan: node, change, from_version, to_version,
applied, moves, keys, bytes.")]
pub struct LeaveArgs {
    /// Print the plan without applying it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn remove`
#[derive(Debug, Args)]
#[command(after_help = "\
Takes a dead node out of the layout: its replicas are rebuilt on the new owners from the
surviving replicas. The asked node (--node, or the first that answers) applies the change; a
node that is up is refused (it should `cairn leave`). With --json the plan.")]
pub struct RemoveArgs {
    /// The dead node's name.
    pub node_name: String,
    /// Print the plan without applying it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn layout ...`
#[derive(Debug, clap::Subcommand)]
pub enum LayoutCommand {
    /// MAY LOSE DATA: stop waiting for a node in the layout change in flight.
    Force(ForceArgs),
}

/// `cairn layout force`
#[derive(Debug, Args)]
#[command(
    after_help = "MAY LOSE DATA. A layout change waits for every member's acknowledgement and for every old
replica of a moved partition to push it to the new replicas; a node that died in the middle
leaves the change waiting (`cairn status` shows it under \"waiting for\"). This tells the
cluster to go on without it: writes that only it held are lost. Prefer bringing the node back.
The asked node (--node, or the first that answers) records the override; gossip spreads it."
)]
pub struct ForceArgs {
    /// The node not to wait for.
    pub node_name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn replace`
#[derive(Debug, Args)]
#[command(after_help = "\
Gives a dead node's partitions to a fresh node, which receives them from the surviving replicas.
The asked node (--node, or the first that answers) applies the change. With --json the plan.")]
pub struct ReplaceArgs {
    /// The dead node's name.
    pub old: String,
    /// The fresh node's name.
    pub new: String,
    /// Print the plan without applying it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Serialize)]
struct JoinJson<'a> {
    #[serde(flatten)]
    plan: &'a LayoutChangeReply,
    joined: bool,
    members: usize,
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

/// The plan as text.
fn print_plan(plan: &LayoutChangeReply) {
    let state = if plan.applied {
        "applied"
    } else if plan.from_version == plan.to_version {
        "nothing to change"
    } else {
        "dry run, not applied"
    };
    println!(
        "{}: {}: layout version {} -> {} ({state})",
        plan.node, plan.change, plan.from_version, plan.to_version
    );
    if plan.from_version == plan.to_version {
        return;
    }
    println!("{} partitions change replicas:", plan.moves.len());
    let mut uncounted = 0;
    for m in &plan.moves {
        let size = match (m.keys, m.bytes) {
            (Some(k), Some(b)) => format!("{k} keys, {b} bytes"),
            _ => {
                uncounted += 1;
                "not counted".to_owned()
            }
        };
        println!(
            "  partition {:>5}: {} -> {} ({size})",
            m.partition,
            m.from.join(","),
            m.to.join(",")
        );
    }
    match (plan.keys, plan.bytes) {
        (Some(k), Some(b)) => {
            println!("to transfer: {k} keys, {b} bytes (to every new replica of each partition)")
        }
        _ => println!(
            "to transfer: not counted ({uncounted} partitions had no old replica that answered \
             with its size: down, or running without anti-entropy's trees)"
        ),
    }
    if plan.applied {
        println!(
            "the new version spreads by gossip; it stays in transition until its partitions are \
             transferred (`cairn status`)"
        );
        if !plan.unconfirmed.is_empty() {
            println!(
                "not confirmed with {} (no answer): a change applied there at the same moment \
                 could still supersede this one; check `cairn status` once they are reachable",
                plan.unconfirmed.join(", ")
            );
        }
    }
}

fn print(plan: &LayoutChangeReply, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(plan)?);
    } else {
        print_plan(plan);
    }
    Ok(())
}

/// `cairn join SEED --node N`
pub async fn join(args: JoinArgs) -> anyhow::Result<Outcome> {
    require_node(&args.client, "join")?;
    let session = target::connect(&args.client.as_admin()).await?;
    let plan = session
        .client
        .join(&args.seed, args.dry_run)
        .await
        .map_err(|e| session.fail(e))?;
    let mut status = session.client.status().await.map_err(|e| session.fail(e))?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(if args.dry_run { 0 } else { args.wait });
    while !joined(&status) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(JOIN_POLL_INTERVAL).await;
        status = session.client.status().await.map_err(|e| session.fail(e))?;
    }
    session.close().await;
    let ok = joined(&status);
    if args.client.json {
        let json = JoinJson {
            plan: &plan,
            joined: ok,
            members: status.members.len(),
        };
        println!("{}", serde_json::to_string(&json)?);
        return Ok(Outcome::Done);
    }
    print_plan(&plan);
    if args.dry_run {
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
    let answer = session.client.leave(args.dry_run).await;
    show_plan(session, answer, args.client.json).await
}

/// Ends a layout command: its plan (or the node's refusal, explained), then the connection.
async fn show_plan(
    session: target::Session,
    answer: Result<LayoutChangeReply, ClientError>,
    json: bool,
) -> anyhow::Result<Outcome> {
    let plan = answer.map_err(|e| session.fail(e))?;
    session.close().await;
    print(&plan, json)?;
    Ok(Outcome::Done)
}

/// `cairn layout force NODE`
pub async fn force(args: ForceArgs) -> anyhow::Result<Outcome> {
    let session = target::connect(&args.client.as_admin()).await?;
    let status = session
        .client
        .layout_force(&args.node_name)
        .await
        .map_err(|e| session.fail(e))?;
    session.close().await;
    println!(
        "{}: the layout change no longer waits for {}; data only it held may be lost",
        status.node, args.node_name
    );
    Ok(Outcome::Done)
}

/// `cairn remove NODE`
pub async fn remove(args: RemoveArgs) -> anyhow::Result<Outcome> {
    let session = target::connect(&args.client.as_admin()).await?;
    let answer = session.client.remove(&args.node_name, args.dry_run).await;
    show_plan(session, answer, args.client.json).await
}

/// `cairn replace OLD NEW`
pub async fn replace(args: ReplaceArgs) -> anyhow::Result<Outcome> {
    let session = target::connect(&args.client.as_admin()).await?;
    let answer = session
        .client
        .replace(&args.old, &args.new, args.dry_run)
        .await;
    show_plan(session, answer, args.client.json).await
}
