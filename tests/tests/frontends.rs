//! The RESP and HTTP front ends in-process over real TCP on loopback: a plaintext listener is
//! served only on loopback, pipelined commands are answered in order, and oversized or broken
//! input gets an error without taking the node down.

use cairn_tests::TestDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Reads from `conn` until `expected` bytes arrived (or the connection ends), with a deadline.
async fn read_exactly(conn: &mut TcpStream, expected: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while got.len() < expected {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("an answer within 30 s");
    got
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[tokio::test]
async fn a_plaintext_resp_listener_on_loopback_answers_a_pipeline_in_order() {
    let dir = TestDir::new().unwrap();
    let mut config = dir.node_config("node1").unwrap();
    config.resp.plaintext_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = cairn_node::Node::start(config).await.unwrap();
    let addr = node
        .frontends()
        .resp_plaintext
        .expect("a plaintext RESP listener");
    let mut conn = TcpStream::connect(addr).await.unwrap();

    // One write: SET then GET of the same key, then an inline PING, before reading anything.
    let mut pipeline = command(&[b"SET", b"k", b"v1"]);
    pipeline.extend(command(&[b"GET", b"k", b"ONE"]));
    pipeline.extend(command(&[b"HELLO", b"3"]));
    pipeline.extend(command(&[b"GET", b"missing", b"ONE"]));
    pipeline.extend_from_slice(b"PING\r\n");
    conn.write_all(&pipeline).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"+PONG\r\n") {
        let more = read_exactly(&mut conn, 1).await;
        assert!(
            !more.is_empty(),
            "closed after {}",
            String::from_utf8_lossy(&got)
        );
        got.extend(more);
    }
    let got = String::from_utf8_lossy(&got);
    // In order: SET's OK, GET's value, HELLO 3's map, and from then on nil is RESP3's `_`.
    assert!(got.starts_with("+OK\r\n$2\r\nv1\r\n%7\r\n"), "{got}");
    assert!(got.ends_with("_\r\n+PONG\r\n"), "{got}");

    // A bulk string longer than RESP_REQUEST_BYTES_MAX is refused from its header alone, and
    // the connection closed; the node serves the next one.
    let huge = format!(
        "*2\r\n$3\r\nGET\r\n${}\r\n",
        cairn_node::limits::RESP_REQUEST_BYTES_MAX + 1
    );
    conn.write_all(huge.as_bytes()).await.unwrap();
    let mut refused = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        conn.read_to_end(&mut refused),
    )
    .await
    .expect("closed within 30 s")
    .unwrap();
    let refused = String::from_utf8_lossy(&refused);
    assert!(refused.contains("RESP_REQUEST_BYTES_MAX"), "{refused}");
    let mut again = TcpStream::connect(addr).await.unwrap();
    again.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut again, 7).await, b"+PONG\r\n");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_plaintext_listener_off_loopback_is_refused_at_start() {
    let dir = TestDir::new().unwrap();
    let mut config = dir.node_config("node1").unwrap();
    config.http.plaintext_listen = Some("0.0.0.0:0".parse().unwrap());
    let err = match cairn_node::Node::start(config).await {
        Ok(_) => panic!("a plaintext listener on 0.0.0.0 was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("loopback"), "{err}");
}

#[tokio::test]
async fn a_plaintext_http_listener_serves_the_api_and_the_metrics_listener_metrics() {
    let dir = TestDir::new().unwrap();
    let mut config = dir.node_config("node1").unwrap();
    config.http.plaintext_listen = Some("127.0.0.1:0".parse().unwrap());
    config.metrics.plaintext_listen = Some("[::1]:0".parse().unwrap());
    let node = match cairn_node::Node::start(config).await {
        Ok(node) => node,
        // A machine without IPv6 loopback cannot run the [::1] half; say so rather than skip.
        Err(e) => panic!("starting with a metrics listener on [::1]: {e}"),
    };
    let http = node.frontends().http_plaintext.unwrap();
    let request = |addr, text: String| async move {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(text.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            conn.read_to_end(&mut answer),
        )
        .await
        .expect("an answer within 30 s")
        .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    let put = request(
        http,
        "PUT /kv/a%20key HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            .into(),
    )
    .await;
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let get = request(
        http,
        "GET /kv/a%20key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(
        get.starts_with("HTTP/1.1 200") && get.ends_with("hello"),
        "{get}"
    );
    assert!(get.to_lowercase().contains("x-cairn-context: "), "{get}");
    // The API listener does not serve metrics, the metrics listener does.
    let wrong = request(
        http,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(wrong.starts_with("HTTP/1.1 404"), "{wrong}");
    let metrics = node.frontends().metrics_plaintext.unwrap();
    let page = request(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("cairn_requests_total{frontend=\"http\",op=\"put\",outcome=\"ok\"}"),
        "{page}"
    );
    node.shutdown().await.unwrap();
}
