//! Memory budgets before allocation, on a real node process: streams that announce large frames
//! and send nothing cost the node no memory, frames over its budget are refused as overloaded
//! without a byte read, and the node keeps serving everyone else.

mod common;

use std::time::{Duration, Instant};

use cairn_net::limits::{
    FRAME_BYTES_IN_FLIGHT_MAX, FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX, STREAMS_PER_CONNECTION_MAX,
};
use cairn_net::Identity;
use cairn_proto::limits::FRAME_BYTES_MAX;
use cairn_proto::{ErrorReply, Response};
use common::Dev;

/// Streams the test opens, each announcing a frame of `FRAME_BYTES_MAX` and sending no body.
const STREAMS: usize = 1000;
/// Connections they are spread over (a connection carries at most
/// `STREAMS_PER_CONNECTION_MAX` at once).
const CONNECTIONS: usize = 4;
/// How long the node may take to answer every refused stream on a loaded machine.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// The node process's resident memory, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kb * 1024
}

async fn connect(addr: std::net::SocketAddr, id: &Identity) -> quinn::Connection {
    let ep = cairn_net::client_endpoint(id, addr).unwrap();
    ep.connect(addr, cairn_net::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

#[test]
fn a_thousand_streams_announcing_8_mib_stay_within_the_budget_and_the_node_serves_on() {
    const _: () = assert!(STREAMS <= CONNECTIONS * STREAMS_PER_CONNECTION_MAX as usize);
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));
    let pid = dev.node_pid("node1");
    let addr = cairn_node::NodeConfig::load(&dir.path().join("node1/node.toml"))
        .unwrap()
        .listen;
    let id = Identity::load(
        &dir.path().join("ca.pem"),
        &dir.path().join("client/client.pem"),
        &dir.path().join("client/client.key"),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let conns: Vec<quinn::Connection> = futures(CONNECTIONS, || connect(addr, &id)).await;
        let before = rss_bytes(pid);

        // Every stream sends only its length prefix, then waits for an answer.
        let header = (FRAME_BYTES_MAX as u32).to_be_bytes();
        let mut answers = tokio::task::JoinSet::new();
        let mut held = Vec::new();
        for k in 0..STREAMS {
            let (mut send, mut recv) = conns[k % CONNECTIONS].open_bi().await.unwrap();
            send.write_all(&header).await.unwrap();
            answers.spawn(async move {
                let answer = cairn_net::read_frame::<Response>(&mut recv).await;
                (answer, send)
            });
        }

        // Each connection's budget holds FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX / 8 MiB such
        // frames, the node's FRAME_BYTES_IN_FLIGHT_MAX / 8 MiB; every other stream is refused
        // at once, naming the limit, and none of them waits for a body.
        let admitted = (FRAME_BYTES_IN_FLIGHT_PER_CONNECTION_MAX / FRAME_BYTES_MAX * CONNECTIONS)
            .min(FRAME_BYTES_IN_FLIGHT_MAX / FRAME_BYTES_MAX);
        let refused_expected = STREAMS - admitted;
        let end = Instant::now() + ANSWER_DEADLINE;
        let mut refused = 0;
        while refused < refused_expected {
            let left = end.saturating_duration_since(Instant::now());
            let Ok(Some(joined)) = tokio::time::timeout(left, answers.join_next()).await else {
                panic!("only {refused} of {refused_expected} streams were refused in time");
            };
            let (answer, send) = joined.unwrap();
            match answer {
                Ok(Response::Error(ErrorReply::Overloaded { reason })) => {
                    assert!(reason.contains("FRAME_BYTES_IN_FLIGHT"), "{reason}");
                    refused += 1;
                }
                other => panic!("a stream over the budget was answered with {other:?}"),
            }
            held.push(send);
        }
        let after = rss_bytes(pid);
        println!(
            "node RSS {} KiB before, {} KiB with {STREAMS} streams announcing 8 MiB ({admitted} admitted, {refused} refused)",
            before / 1024,
            after / 1024
        );
        assert!(
            after.saturating_sub(before) < FRAME_BYTES_IN_FLIGHT_MAX as u64,
            "resident memory grew by {} bytes, over FRAME_BYTES_IN_FLIGHT_MAX",
            after - before
        );

        // While the budget is full, another client is still served: pings, gets and small
        // writes draw on their own connection's budget.
        let client = cairn_client::Client::connect(addr, &id).await.unwrap();
        assert_eq!(client.ping().await.unwrap(), "node1");
        client
            .put(b"k", b"small", &Default::default(), &Default::default())
            .await
            .unwrap();
        // Once the stalled streams are gone, their reservations are free for large writes.
        for conn in &conns {
            conn.close(0u32.into(), b"done");
        }
        drop(held);
        let big = vec![7u8; 1024 * 1024];
        let end = Instant::now() + ANSWER_DEADLINE;
        loop {
            match client
                .put(b"big", &big, &Default::default(), &Default::default())
                .await
            {
                Ok(_) => break,
                Err(cairn_client::ClientError::Node(ErrorReply::Overloaded { .. }))
                    if Instant::now() < end =>
                {
                    // The node notices the closed connections a moment after they close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("a 1 MiB put after the streams closed failed: {e}"),
            }
        }
        client.close().await;
    });
    drop(dev);
}

/// Runs `n` copies of `make()` one after another and collects their outputs.
async fn futures<T, F: std::future::Future<Output = T>>(
    n: usize,
    mut make: impl FnMut() -> F,
) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(make().await);
    }
    out
}
