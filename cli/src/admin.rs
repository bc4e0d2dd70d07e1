//! `cairn status` and `cairn ring`: the cluster as one node sees it, with each member's own count
//! of undelivered hints and its own anti-entropy counters.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_net::Identity;
use cairn_proto::{
    AntiEntropyStatus, LayoutStatus, MemberStatus, RingReply, StatusReply, TombstoneStatus,
    TransferProgress,
};
use clap::Args;
use serde::Serialize;

use crate::cluster::{dial_addr, name_order};
use crate::limits::{MEMBER_DOWN_STATUS_TIMEOUT, MEMBER_STATUS_TIMEOUT};
use crate::target::{self, ClientArgs, Target};
use crate::Outcome;

/// `cairn status`
#[derive(Debug, Args)]
#[command(after_help = "\
Output: one line per member, as the asked node sees it (marked *): name, address, status
(joining, up, degraded, down, leaving or left: the status the member declares, degraded when
its disk is full or failed (it refuses writes, is routed around, and needs a restart once the
disk is fixed; a line below the table says so), or down when the asked node judges it
unreachable), generation (higher on every start), phi (the failure detector's
suspicion; the node is judged down above 8 by default), seconds since its heartbeat last
moved, partitions it owns, and hints it holds for other nodes that are not delivered yet (`-`
when the member could not be asked). Then one line per member about its anti-entropy: on, off
or rebuilding (its Merkle trees, after a start), its last completed exchange (when, with which
peer and partition), exchanges completed and failed, keys it repaired, bytes it sent, and keys
in its trees. With --json: {\"node\":..,\"replicas\":..,\"partitions\":..,
\"members\":[{\"name\",\"addr\",\"status\",\"generation\",\"phi\",\"heartbeat_age_ms\",\"zone\",
\"this_node\",\"partitions\",\"hints_pending\",\"anti_entropy\"}]}, anti_entropy {\"enabled\",
\"trees_ready\",\"keys\",\"exchanges\",\"exchanges_failed\",\"keys_repaired\",\"bytes_sent\",
\"last_exchange_unix_ms\",\"last_peer\",\"last_partition\"}; hints_pending and anti_entropy are
null for a member that could not be asked, heartbeat_age_ms null for the asked node. Then one
line per member about its tombstones (keys whose every sibling is a delete): whether it reaps
them, how many it holds, how many it reaped since it started, how many its last round could
not reap yet and the members that round waited for; in JSON \"tombstones\": {\"enabled\",
\"held\",\"reaped\",\"blocked\",\"waiting_on\"}, null for a member that could not be asked. Last, the
layout the asked node holds: its version, whether a change is in transition, which members it
waits for, each node's partitions to send and receive, and each changed partition's replicas
before and after, who pushed it, and whether its reads use the new replicas; in JSON
\"layout\": {\"version\",\"versions\",\"members\",\"transition\": null or {\"from\",\"to\",
\"waiting_acks\",\"waiting_pushes\",\"forced\",\"nodes\":[{\"node\",\"to_send\",\"to_receive\"}],
\"partitions\":[{\"partition\",\"from\",\"to\",\"pushed\",\"reads_switched\"}]}}, null while it holds
none.")]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn ring`
#[derive(Debug, Args)]
#[command(after_help = "\
Output: one line per partition: its number, its N primary replicas (owner first) and the
fallbacks tried, in order, when a primary is down. With --json: {\"replicas\":..,
\"partitions\":[{\"partition\":..,\"primaries\":[..],\"fallbacks\":[..]}]}.")]
pub struct RingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
struct StatusJson {
    node: String,
    replicas: u8,
    partitions: u32,
    members: Vec<MemberJson>,
    layout: Option<LayoutStatus>,
}

#[derive(Debug, Serialize)]
struct MemberJson {
    name: String,
    addr: String,
    status: String,
    generation: u64,
    phi: f64,
    heartbeat_age_ms: Option<u64>,
    zone: Option<String>,
    this_node: bool,
    partitions: u32,
    hints_pending: Option<u64>,
    anti_entropy: Option<AntiEntropyStatus>,
    transfer: Option<TransferProgress>,
    tombstones: Option<TombstoneStatus>,
}

/// `cairn status`
pub async fn status(args: StatusArgs) -> anyhow::Result<Outcome> {
    let args = args.client;
    let session = target::connect(&args).await?;
    let mut reply = session.client.status().await.map_err(|e| session.fail(e))?;
    session.close().await;
    reply
        .members
        .sort_by(|a, b| name_order(&a.name).cmp(&name_order(&b.name)));
    let identity = args.identity()?;
    // Each member's hint count and anti-entropy counters come from that member: the asked node
    // knows only its own.
    let asks = reply.members.iter().map(|m| {
        let identity = identity.clone();
        let asked = m.name == reply.node;
        let own = (
            m.hints_pending,
            Some(reply.anti_entropy.clone()),
            reply.transfer.clone(),
            Some(reply.tombstones.clone()),
        );
        let member = m.clone();
        let timeout = match m.status.as_str() {
            // A degraded member answers; only its disk fails.
            "up" | "degraded" => MEMBER_STATUS_TIMEOUT,
            _ => MEMBER_DOWN_STATUS_TIMEOUT,
        }
        .min(args.timeout());
        async move {
            match asked {
                true => own,
                false => own_view(&member, &identity, timeout)
                    .await
                    .map_or((None, None, None, None), |(h, ae, t, ts)| {
                        (h, Some(ae), t, Some(ts))
                    }),
            }
        }
    });
    let views = join_all(asks).await;
    let json = StatusJson {
        node: reply.node.clone(),
        replicas: reply.replicas,
        partitions: reply.partitions,
        members: reply
            .members
            .iter()
            .zip(views)
            .map(
                |(m, (hints_pending, anti_entropy, transfer, tombstones))| MemberJson {
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    status: m.status.clone(),
                    generation: m.generation,
                    phi: m.phi,
                    heartbeat_age_ms: m.heartbeat_age_ms,
                    zone: m.zone.clone(),
                    this_node: m.this_node,
                    partitions: m.partitions,
                    hints_pending,
                    anti_entropy,
                    transfer,
                    tombstones,
                },
            )
            .collect(),
        layout: reply.layout.as_deref().cloned(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&json)?);
    } else {
        print!("{}", status_text(&json, unix_ms_now()));
    }
    Ok(Outcome::Done)
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Asks `member` itself how many hints it holds and what its anti-entropy did; `None` if it
/// cannot be asked within `timeout`.
async fn own_view(
    member: &MemberStatus,
    identity: &Identity,
    timeout: Duration,
) -> Option<(
    Option<u64>,
    AntiEntropyStatus,
    Option<TransferProgress>,
    TombstoneStatus,
)> {
    let addr: SocketAddr = member.addr.parse().ok()?;
    let target = Target::at(Some(member.name.clone()), dial_addr(addr));
    let ask = async {
        let client = target.connect(identity, timeout).await.ok()?;
        let reply: Option<StatusReply> = client.status().await.ok();
        let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
        let reply = reply?;
        // An address that now belongs to another node does not answer for this one.
        let hints = reply
            .members
            .into_iter()
            .find(|m| m.name == member.name && reply.node == member.name)?
            .hints_pending;
        Some((hints, reply.anti_entropy, reply.transfer, reply.tombstones))
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// Runs futures concurrently, keeping their order.
async fn join_all<T: Send + 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a status task panicked"));
    }
    out
}

/// A table with a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// How long ago `unix_ms` was, seen at `now_unix_ms`, in a few characters.
fn ago(unix_ms: u64, now_unix_ms: u64) -> String {
    let ms = now_unix_ms.saturating_sub(unix_ms);
    match ms {
        0..=999 => "just now".to_owned(),
        1_000..=59_999 => format!("{}s ago", ms / 1_000),
        60_000..=3_599_999 => format!("{}m ago", ms / 60_000),
        _ => format!("{}h ago", ms / 3_600_000),
    }
}

/// A byte count for people: B, KiB, MiB, GiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One member's anti-entropy line (`-` everywhere when it could not be asked).
fn anti_entropy_row(name: &str, ae: Option<&AntiEntropyStatus>, now_unix_ms: u64) -> Vec<String> {
    let Some(ae) = ae else {
        let mut row = vec![name.to_owned()];
        row.extend(std::iter::repeat_n("-".to_owned(), 7));
        return row;
    };
    let state = match (ae.enabled, ae.trees_ready) {
        (false, _) => "off",
        (true, false) => "rebuilding",
        (true, true) => "on",
    };
    let with = match (&ae.last_peer, ae.last_partition) {
        (Some(peer), Some(p)) => format!("{peer}/p{p}"),
        _ => "-".to_owned(),
    };
    vec![
        name.to_owned(),
        state.to_owned(),
        ae.last_exchange_unix_ms
            .map_or_else(|| "never".to_owned(), |t| ago(t, now_unix_ms)),
        with,
        format!("{} ({} failed)", ae.exchanges, ae.exchanges_failed),
        ae.keys_repaired.to_string(),
        bytes(ae.bytes_sent),
        ae.keys.to_string(),
    ]
}

/// What the operator must do about each degraded member: its store refuses commits after a
/// failed one until its writer recovers it in place, which needs free space (twice its commit
/// log's size, see `RECOVERY_FREE_LOG_FACTOR`) or a disk that works again.
fn degraded_text(members: &[MemberJson]) -> String {
    members
        .iter()
        .filter(|m| m.status == "degraded")
        .map(|m| {
            format!(
                "{} is degraded: its disk is full or failed, it refuses writes and is routed \
                 around; free space (or fix the disk): it recovers by itself, no restart needed\n",
                m.name
            )
        })
        .collect()
}

fn status_text(s: &StatusJson, now_unix_ms: u64) -> String {
    let up = s.members.iter().filter(|m| m.status == "up").count();
    let mut out = format!(
        "{} of {} members up, as {} sees them; N={} replicas per key, Q={} partitions\n",
        up,
        s.members.len(),
        s.node,
        s.replicas,
        s.partitions
    );
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.name, if m.this_node { " *" } else { "" }),
                m.addr.clone(),
                m.status.clone(),
                m.generation.to_string(),
                phi_text(m.phi),
                m.heartbeat_age_ms.map_or_else(
                    || "-".to_owned(),
                    |ms| format!("{:.1}s", ms as f64 / 1000.0),
                ),
                m.partitions.to_string(),
                m.hints_pending
                    .map_or_else(|| "-".to_owned(), |h| h.to_string()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME",
            "ADDR",
            "STATUS",
            "GENERATION",
            "PHI",
            "HEARTBEAT",
            "PARTITIONS",
            "HINTS",
        ],
        &rows,
    ));
    out.push_str(&degraded_text(&s.members));
    let rows: Vec<Vec<String>> = s
        .members
        .iter()
        .map(|m| anti_entropy_row(&m.name, m.anti_entropy.as_ref(), now_unix_ms))
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "NAME",
            "ANTI-ENTROPY",
            "LAST EXCHANGE",
            "WITH",
            "EXCHANGES",
            "REPAIRED",
            "SENT",
            "KEYS",
        ],
        &rows,
    ));
    out.push('\n');
    out.push_str(&tombstones_text(&s.members));
    out.push('\n');
    out.push_str(&layout_text(s.layout.as_ref()));
    out.push_str(&transfer_text(&s.members));
    out
}

/// One line per member about its tombstones: held, reaped since its start, and what its last
/// round waited for (`-` when it could not be asked).
fn tombstones_text(members: &[MemberJson]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| match &m.tombstones {
            None => {
                let mut row = vec![m.name.clone()];
                row.extend(std::iter::repeat_n("-".to_owned(), 5));
                row
            }
            Some(t) => vec![
                m.name.clone(),
                if t.enabled { "on" } else { "off" }.to_owned(),
                t.held.to_string(),
                t.reaped.to_string(),
                t.blocked.to_string(),
                if t.waiting_on.is_empty() {
                    "-".to_owned()
                } else {
                    t.waiting_on.join(",")
                },
            ],
        })
        .collect();
    table(
        &[
            "NAME",
            "REAPING",
            "TOMBSTONES",
            "REAPED",
            "BLOCKED",
            "WAITING ON",
        ],
        &rows,
    )
}

/// Each member's push of the change in flight, for the members that have one.
fn transfer_text(members: &[MemberJson]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .filter_map(|m| Some((m, m.transfer.as_ref()?)))
        .map(|(m, t)| {
            let stalled: Vec<String> = t
                .stalled
                .iter()
                .map(|s| {
                    format!(
                        "p{} {} ({}x: {})",
                        s.partition,
                        s.target.as_deref().unwrap_or("own read"),
                        s.attempts,
                        s.reason
                    )
                })
                .collect();
            vec![
                m.name.clone(),
                t.version.to_string(),
                format!("{}/{}", t.partitions_pushed, t.partitions_total),
                t.keys_moved.to_string(),
                bytes(t.bytes_moved),
                format!("{}/s", bytes(t.bytes_per_sec)),
                t.keys_left_estimate.map_or("-".into(), |k| k.to_string()),
                t.seconds_left_estimate
                    .map_or("-".into(), |s| format!("{s} s")),
                if stalled.is_empty() {
                    "-".into()
                } else {
                    stalled.join("; ")
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(
        &[
            "PUSHING",
            "VERSION",
            "PARTITIONS",
            "KEYS",
            "BYTES",
            "RATE",
            "KEYS LEFT",
            "TIME LEFT",
            "WAITING ON",
        ],
        &rows,
    )
}

/// The layout part of `status`: its version(s), and the change in flight with each node's
/// partitions to send and receive and each changed partition's progress.
fn layout_text(layout: Option<&LayoutStatus>) -> String {
    let Some(l) = layout else {
        return "layout: none yet (the asked node waits for one from the cluster)\n".to_owned();
    };
    let mut l = l.clone();
    l.members.sort_by(|a, b| name_order(a).cmp(&name_order(b)));
    let l = &l;
    let Some(t) = &l.transition else {
        return format!(
            "layout version {}, settled: {}\n",
            l.version,
            l.members.join(", ")
        );
    };
    let mut out = format!(
        "layout version {} in transition from {}: {}\n",
        t.to,
        t.from,
        l.members.join(", ")
    );
    let list = |names: &[String]| {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    out.push_str(&format!(
        "waiting for acknowledgements from: {}\nwaiting for pushes from: {}\n",
        list(&t.waiting_acks),
        list(&t.waiting_pushes)
    ));
    if !t.forced.is_empty() {
        out.push_str(&format!(
            "not waited for (may lose data): {}\n",
            t.forced.join(", ")
        ));
    }
    let rows: Vec<Vec<String>> = t
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.to_send.to_string(),
                n.to_receive.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["NODE", "TO SEND", "TO RECEIVE"], &rows));
    let rows: Vec<Vec<String>> = t
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.from.join(","),
                p.to.join(","),
                if p.pushed.is_empty() {
                    "-".to_owned()
                } else {
                    p.pushed.join(",")
                },
                if p.reads_switched { "new" } else { "old" }.to_owned(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PARTITION", "FROM", "TO", "PUSHED BY", "READS"],
        &rows,
    ));
    out
}

/// Phi for people: one decimal, and "inf" for a member never heard from.
fn phi_text(phi: f64) -> String {
    if phi >= 1e9 {
        "inf".to_owned()
    } else {
        format!("{phi:.1}")
    }
}

/// `cairn ring`
pub async fn ring(args: RingArgs) -> anyhow::Result<Outcome> {
    let args = args.client;
    let session = target::connect(&args).await?;
    let reply = session.client.ring().await.map_err(|e| session.fail(e))?;
    session.close().await;
    if args.json {
        println!("{}", ring_json(&reply));
    } else {
        print!("{}", ring_text(&reply));
    }
    Ok(Outcome::Done)
}

#[derive(Serialize)]
struct RingJson<'a> {
    replicas: u8,
    partitions: Vec<PartitionJson<'a>>,
}

#[derive(Serialize)]
struct PartitionJson<'a> {
    partition: u32,
    primaries: &'a [String],
    fallbacks: &'a [String],
}

fn ring_json(r: &RingReply) -> String {
    let json = RingJson {
        replicas: r.replicas,
        partitions: r
            .partitions
            .iter()
            .map(|p| PartitionJson {
                partition: p.partition,
                primaries: &p.primaries,
                fallbacks: &p.fallbacks,
            })
            .collect(),
    };
    serde_json::to_string(&json).expect("plain structs always serialize")
}

fn ring_text(r: &RingReply) -> String {
    let mut out = format!(
        "{} partitions, N={} replicas per key\n",
        r.partitions.len(),
        r.replicas
    );
    let list = |names: &[String]| match names {
        [] => "-".to_owned(),
        names => names.join(" "),
    };
    let rows: Vec<Vec<String>> = r
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                list(&p.primaries),
                list(&p.fallbacks),
            ]
        })
        .collect();
    out.push_str(&table(&["PARTITION", "PRIMARIES", "FALLBACKS"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use cairn_proto::PartitionEntry;
    use serde_json::json;

    use super::*;

    fn member(name: &str, status: &str, hints: Option<u64>) -> MemberJson {
        let this_node = name == "node1";
        MemberJson {
            name: name.into(),
            addr: "127.0.0.1:7001".into(),
            status: status.into(),
            generation: 1_700_000_000,
            phi: if this_node { 0.0 } else { 9.25 },
            heartbeat_age_ms: (!this_node).then_some(21_500),
            zone: None,
            this_node,
            partitions: 32,
            hints_pending: hints,
            anti_entropy: hints.map(|_| AntiEntropyStatus {
                enabled: true,
                trees_ready: true,
                keys: 10_000,
                exchanges: 130,
                exchanges_failed: 2,
                keys_repaired: 9_998,
                bytes_sent: 3 * 1024 * 1024 / 2,
                last_exchange_unix_ms: Some(1_000_000),
                last_peer: Some("node3".into()),
                last_partition: Some(17),
            }),
            transfer: None,
            tombstones: hints.map(|_| TombstoneStatus {
                enabled: true,
                held: 12,
                reaped: 3,
                blocked: 2,
                waiting_on: vec!["node3".into()],
            }),
        }
    }

    #[test]
    fn a_degraded_member_is_named_with_what_to_do() {
        let text = degraded_text(&[
            member("node1", "up", Some(0)),
            member("node3", "degraded", None),
        ]);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("node3 is degraded"), "{text}");
        assert!(text.contains("recovers by itself"), "{text}");
        assert_eq!(degraded_text(&[member("node2", "down", None)]), "");
    }

    #[test]
    fn a_push_in_flight_shows_its_progress_and_what_it_waits_on() {
        let mut pushing = member("node2", "up", Some(0));
        pushing.transfer = Some(TransferProgress {
            version: 4,
            partitions_total: 5,
            partitions_pushed: 2,
            partitions_active: 2,
            keys_moved: 1_200,
            bytes_moved: 3 * 1024 * 1024,
            bytes_per_sec: 1024 * 1024,
            keys_left_estimate: Some(800),
            seconds_left_estimate: Some(2),
            stalled: vec![cairn_proto::TransferStalled {
                partition: 11,
                target: Some("node6".into()),
                attempts: 8,
                reason: "unreachable".into(),
            }],
        });
        let text = transfer_text(&[member("node1", "up", Some(0)), pushing]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "a header and node2 only: {text}");
        for field in [
            "node2",
            "2/5",
            "1200",
            "800",
            "2 s",
            "p11 node6 (8x: unreachable)",
        ] {
            assert!(lines[1].contains(field), "{field} in {text}");
        }
        assert_eq!(transfer_text(&[member("node1", "up", None)]), "");
    }

    #[test]
    fn status_shows_unknown_hints_and_anti_entropy_as_a_dash_and_null() {
        let s = StatusJson {
            node: "node1".into(),
            replicas: 2,
            partitions: 64,
            members: vec![
                member("node1", "up", Some(3)),
                member("node2", "down", None),
            ],
            layout: Some(LayoutStatus {
                version: 1,
                versions: vec![1],
                members: vec!["node1".into(), "node2".into()],
                transition: None,
            }),
        };
        assert_eq!(
            status_text(&s, 1_012_500),
            "\
1 of 2 members up, as node1 sees them; N=2 replicas per key, Q=64 partitions
NAME     ADDR            STATUS  GENERATION  PHI  HEARTBEAT  PARTITIONS  HINTS
node1 *  127.0.0.1:7001  up      1700000000  0.0  -          32          3
node2    127.0.0.1:7001  down    1700000000  9.2  21.5s      32          -

NAME   ANTI-ENTROPY  LAST EXCHANGE  WITH       EXCHANGES       REPAIRED  SENT     KEYS
node1  on            12s ago        node3/p17  130 (2 failed)  9998      1.5 MiB  10000
node2  -             -              -          -               -         -        -

NAME   REAPING  TOMBSTONES  REAPED  BLOCKED  WAITING ON
node1  on       12          3       2        node3
node2  -        -           -       -        -

layout version 1, settled: node1, node2
"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(json["members"][0]["hints_pending"], 3);
        assert!(json["members"][1]["hints_pending"].is_null());
        assert_eq!(json["members"][1]["status"], "down");
        let ae = &json["members"][0]["anti_entropy"];
        assert_eq!(ae["keys_repaired"], 9998);
        let t = &json["members"][0]["tombstones"];
        assert_eq!((&t["held"], &t["reaped"]), (&json!(12), &json!(3)));
        assert_eq!(t["waiting_on"], json!(["node3"]));
        assert!(json["members"][1]["tombstones"].is_null());
        assert_eq!(ae["bytes_sent"], 3 * 1024 * 1024 / 2);
        assert_eq!(ae["last_exchange_unix_ms"], 1_000_000);
        assert_eq!(ae["last_peer"], "node3");
        assert_eq!(ae["last_partition"], 17);
        assert!(json["members"][1]["anti_entropy"].is_null());
    }

    #[test]
    fn anti_entropy_states_times_and_sizes_read_at_a_glance() {
        let mut ae = AntiEntropyStatus {
            enabled: true,
            ..AntiEntropyStatus::default()
        };
        let row = |ae: &AntiEntropyStatus| anti_entropy_row("n", Some(ae), 5_000_000);
        assert_eq!(row(&ae)[1..4], ["rebuilding", "never", "-"]);
        ae.trees_ready = true;
        assert_eq!(row(&ae)[1], "on");
        ae.enabled = false;
        assert_eq!(row(&ae)[1], "off");
        assert_eq!(ago(5_000_000, 5_000_000), "just now");
        assert_eq!(ago(5_000_001, 5_000_000), "just now", "a clock behind");
        assert_eq!(ago(1_000_000, 5_000_000), "1h ago");
        assert_eq!(ago(4_880_000, 5_000_000), "2m ago");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(5 << 40), "5120.0 GiB");
    }

    #[test]
    fn ring_lists_primaries_and_fallbacks() {
        let r = RingReply {
            replicas: 2,
            partitions: vec![
                PartitionEntry {
                    partition: 0,
                    primaries: vec!["node1".into(), "node2".into()],
                    fallbacks: vec!["node3".into()],
                },
                PartitionEntry {
                    partition: 1,
                    primaries: vec!["node2".into()],
                    fallbacks: vec![],
                },
            ],
        };
        assert_eq!(
            ring_text(&r),
            "\
2 partitions, N=2 replicas per key
PARTITION  PRIMARIES    FALLBACKS
0          node1 node2  node3
1          node2        -
"
        );
        assert_eq!(
            ring_json(&r),
            r#"{"replicas":2,"partitions":[{"partition":0,"primaries":["node1","node2"],"fallbacks":["node3"]},{"partition":1,"primaries":["node2"],"fallbacks":[]}]}"#
        );
    }
}
