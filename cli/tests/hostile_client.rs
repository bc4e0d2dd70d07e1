//! An independent QUIC client against real node processes: `scripts/hostile_quic.py` (Python's
//! aioquic, with the dev cluster's data certificate) sends each node of a 3-node `cairn dev`
//! cluster the Forward nested 200,000 deep that once overflowed a node's stack, frames over the
//! limit, empty, cut short and of another version, 200 random frames and 1,000 half-sent
//! streams announcing the largest frame. Every node must stay alive, answer a Ping while those
//! streams are held, and serve puts and gets afterwards.

mod common;

use std::path::Path;
use std::process::Command;

use cairn_proto::limits::FRAME_BYTES_MAX;
use cairn_proto::{encode_frame, ErrorReply, Request, Response};
use common::{alive, run_in, values, Dev};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the script"))
        .collect()
}

/// The answer the script recorded for `probe`, decoded as a whole frame.
fn answer(report: &serde_json::Value, probe: &str) -> Response {
    let hex = report[probe]["answer"]
        .as_str()
        .unwrap_or_else(|| panic!("{probe}: no answer: {report}"));
    let frame = unhex(hex);
    assert!(frame.len() > 4, "{probe}: answer too short: {hex}");
    cairn_proto::decode_body(&frame[4..]).unwrap_or_else(|e| panic!("{probe}: {e}: {hex}"))
}

#[test]
fn bad_frames_from_an_independent_quic_client_leave_every_node_serving() {
    common::require_python_package("aioquic");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(3));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/hostile_quic.py");
    let ping = encode_frame(&Request::Ping).unwrap();
    let ping_hex: String = ping.iter().map(|b| format!("{b:02x}")).collect();
    for node in ["node1", "node2", "node3"] {
        let listen = cairn_node::NodeConfig::load(&dev.dir().join(node).join("node.toml"))
            .unwrap()
            .listen;
        let out = Command::new("python3")
            .arg(&script)
            .args(["--host", &listen.ip().to_string()])
            .args(["--port", &listen.port().to_string()])
            .arg("--ca")
            .arg(dev.dir().join("ca.pem"))
            .arg("--cert")
            .arg(dev.dir().join("client/client.pem"))
            .arg("--key")
            .arg(dev.dir().join("client/client.key"))
            .args(["--alpn", std::str::from_utf8(cairn_proto::ALPN).unwrap()])
            .args(["--server-name", cairn_net::SERVER_NAME])
            .args(["--version", &cairn_proto::PROTOCOL_VERSION.to_string()])
            .args(["--peer-tag", &cairn_proto::PEER_REQUEST_TAG.to_string()])
            .args(["--frame-max", &FRAME_BYTES_MAX.to_string()])
            .args(["--ping", &ping_hex])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{node}: the script failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(alive(dev.node_pid(node)), "{node} died: {report}");

        // A data certificate may not send peer requests: refused before the nesting is read.
        match answer(&report, "nested_forward") {
            Response::Error(ErrorReply::Forbidden { .. }) => {}
            other => panic!("{node}: the nested forward answered with {other:?}"),
        }
        for probe in [
            "over_the_limit",
            "largest_length",
            "empty_frame",
            "wrong_version",
        ] {
            match answer(&report, probe) {
                Response::Error(
                    ErrorReply::Malformed { .. } | ErrorReply::UnsupportedVersion { .. },
                ) => {}
                other => panic!("{node}: {probe} answered with {other:?}"),
            }
        }
        assert_eq!(report["random"]["sent"], 200, "{report}");
        assert_eq!(report["half_sent"], 1000, "{report}");
        match answer(&report, "ping_while_held") {
            Response::Pong { node: name } => assert_eq!(name, node),
            other => panic!("{node}: the ping answered with {other:?}"),
        }
    }
    for node in ["node1", "node2", "node3"] {
        assert!(alive(dev.node_pid(node)), "{node} died");
        let key = format!("after-{node}");
        run_in(dev.dir(), &["put", &key, "still-here", "--node", node]).ok();
        assert_eq!(values(dev.dir(), &key), ["still-here"]);
    }
    dev.stop();
}
