//! Contexts a client cannot forge, over real QUIC and the RESP and HTTP front ends: a context
//! edited by hand (a flipped bit, a raised counter, made-up actors, another key's context, an
//! untagged one) is refused with an error naming the tag, and the key stays writable with the
//! context a node handed out.

use cairn_client::ClientError;
use cairn_node::version::{decode_context, encode_context, VClock};
use cairn_proto::limits::CONTEXT_TAG_BYTES;
use cairn_proto::{ActorId, Context, ErrorReply, GetReply, NodeId, ReadOptions, WriteOptions};
use cairn_tests::cluster::TestCluster;
use cairn_tests::TestDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The raw version vector inside a context a node handed out (its tag cut off).
fn clock_of(context: &Context) -> VClock {
    let raw = &context.0[..context.0.len() - CONTEXT_TAG_BYTES];
    decode_context(&Context(raw.to_vec())).expect("a node's context holds a version vector")
}

/// `clock` encoded as a node would, followed by `tag_from`'s tag: what a client who edited the
/// version vector but cannot compute a tag would send.
fn with_tag_of(clock: &VClock, tag_from: &Context) -> Context {
    let mut bytes = encode_context(clock).0;
    bytes.extend_from_slice(&tag_from.0[tag_from.0.len() - CONTEXT_TAG_BYTES..]);
    Context(bytes)
}

/// Every way a client might edit `genuine`, a context handed out for key `k`; `other_key` is one
/// handed out for another key.
fn forgeries(genuine: &Context, other_key: &Context) -> Vec<(&'static str, Context)> {
    let mut flipped = genuine.clone();
    flipped.0[0] ^= 0x01;
    let mut tag_flipped = genuine.clone();
    *tag_flipped.0.last_mut().expect("not empty") ^= 0x80;

    let mut raised = clock_of(genuine);
    let actor = *raised
        .dots
        .keys()
        .next()
        .expect("a written key has an actor");
    raised.dots.insert(actor, 1_000_000);

    let mut crowded = clock_of(genuine);
    for i in 0..63 {
        crowded.dots.insert(
            ActorId {
                node: NodeId(0xdead_0000 + i),
                epoch: i,
            },
            1,
        );
    }
    let untagged = encode_context(&clock_of(genuine));
    vec![
        ("a flipped bit", flipped),
        ("a flipped tag bit", tag_flipped),
        ("a raised counter", with_tag_of(&raised, genuine)),
        ("63 made-up actors", with_tag_of(&crowded, genuine)),
        ("another key's context", other_key.clone()),
        ("an untagged context", untagged),
    ]
}

fn values(reply: &GetReply) -> Vec<Vec<u8>> {
    reply.siblings.iter().map(|s| s.value.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_context_is_refused_over_quic_and_the_key_stays_writable() {
    let cluster = TestCluster::start(3, 3, 16).await.unwrap();
    let (c1, c2) = (
        cluster.client(1).await.unwrap(),
        cluster.client(2).await.unwrap(),
    );
    let w = WriteOptions::default();
    c1.put(b"k", b"v1", &Context::empty(), &w).await.unwrap();
    c1.put(b"other", b"o", &Context::empty(), &w).await.unwrap();
    let read = c1.get(b"k", &ReadOptions::default()).await.unwrap();
    let other = c1.get(b"other", &ReadOptions::default()).await.unwrap();
    assert_eq!(values(&read), vec![b"v1".to_vec()]);

    for (what, forged) in forgeries(&read.context, &other.context) {
        for (via, client) in [("node1", &c1), ("node2", &c2)] {
            let put = client.put(b"k", b"forged", &forged, &w).await;
            let delete = client.delete(b"k", &forged, &w).await;
            for (op, result) in [("put", put.map(|_| ())), ("delete", delete.map(|_| ()))] {
                match result {
                    Err(ClientError::Node(ErrorReply::BadContext { reason })) => assert!(
                        reason.contains("tag") || reason.contains("shorter"),
                        "{what}, {op} via {via}: {reason}"
                    ),
                    other => panic!("{what}, {op} via {via}: {other:?}"),
                }
            }
        }
    }
    // Nothing forged was stored, and the genuine context still supersedes v1 — through another
    // node than the one that handed it out (every node of a cluster holds the same key).
    let now = c2.get(b"k", &ReadOptions::default()).await.unwrap();
    assert_eq!(values(&now), vec![b"v1".to_vec()]);
    let written = c2.put(b"k", b"v2", &read.context, &w).await.unwrap();
    assert_eq!(values(&written), vec![b"v2".to_vec()]);
    // The write's own context works for the next write, at every node.
    let next = c1.put(b"k", b"v3", &written.context, &w).await.unwrap();
    assert_eq!(values(&next), vec![b"v3".to_vec()]);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_node_of_another_cluster_refuses_this_clusters_context() {
    let (a, b) = (TestDir::new().unwrap(), TestDir::new().unwrap());
    let (na, nb) = (
        a.start_node("node1").await.unwrap(),
        b.start_node("node1").await.unwrap(),
    );
    let ca = cairn_tests::connect(na.local_addr(), &a.client_identity().unwrap())
        .await
        .unwrap();
    let cb = cairn_tests::connect(nb.local_addr(), &b.client_identity().unwrap())
        .await
        .unwrap();
    let w = WriteOptions::default();
    let written = ca.put(b"k", b"v", &Context::empty(), &w).await.unwrap();
    cb.put(b"k", b"v", &Context::empty(), &w).await.unwrap();
    match cb.put(b"k", b"v2", &written.context, &w).await {
        Err(ClientError::Node(ErrorReply::BadContext { reason })) => {
            assert!(reason.contains("another cluster"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    ca.close().await;
    cb.close().await;
    na.shutdown().await.unwrap();
    nb.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_node_without_a_context_key_refuses_to_start_naming_the_file() {
    let dir = TestDir::new().unwrap();
    let key = dir.path().join(cairn_node::config::CONTEXT_KEY_FILE);
    std::fs::remove_file(&key).unwrap();
    let err = match dir.start_node("node1").await {
        Ok(_) => panic!("a node started without a context key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("context.key") && err.contains("cairn cert"),
        "{err}"
    );
    std::fs::write(&key, "not a key\n").unwrap();
    let err = match dir.start_node("node1").await {
        Ok(_) => panic!("a node started with a broken context key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("64 hexadecimal digits"), "{err}");
}

/// Sends one RESP command and reads one complete reply (as raw text) from `conn`.
async fn resp(conn: &mut TcpStream, args: &[&[u8]]) -> String {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    conn.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !complete(&got) {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("an answer within 30 s");
    String::from_utf8(got).unwrap()
}

/// Whether `got` holds one whole RESP2 reply of the shapes these tests get (simple, error, or an
/// array of bulk strings).
fn complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let lines: Vec<&str> = text.split("\r\n").collect();
    if !text.ends_with("\r\n") {
        return false;
    }
    match lines.first().and_then(|l| l.chars().next()) {
        Some('+' | '-' | ':') => true,
        Some('*') => {
            let n: usize = lines[0][1..].parse().unwrap();
            // Each element is a `$len` line and its bytes.
            lines.len() > 2 * n
        }
        _ => false,
    }
}

/// The context token ending a RESP `GET` reply.
fn resp_context(reply: &str) -> String {
    let lines: Vec<&str> = reply.trim_end().split("\r\n").collect();
    lines.last().unwrap().to_string()
}

#[tokio::test]
async fn an_edited_context_is_refused_over_resp_and_http() {
    let dir = TestDir::new().unwrap();
    let mut config = dir.node_config("node1").unwrap();
    config.resp.plaintext_listen = Some("127.0.0.1:0".parse().unwrap());
    config.http.plaintext_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = cairn_node::Node::start(config).await.unwrap();

    // RESP: SET, GET (values then the context), a SET with each forgery, then the real one.
    let mut conn = TcpStream::connect(node.frontends().resp_plaintext.unwrap())
        .await
        .unwrap();
    assert_eq!(resp(&mut conn, &[b"SET", b"k", b"v1"]).await, "+OK\r\n");
    assert_eq!(resp(&mut conn, &[b"SET", b"other", b"o"]).await, "+OK\r\n");
    let token = resp_context(&resp(&mut conn, &[b"GET", b"k"]).await);
    let other = resp_context(&resp(&mut conn, &[b"GET", b"other"]).await);
    let genuine = Context::from_token(&token).unwrap();
    for (what, forged) in forgeries(&genuine, &Context::from_token(&other).unwrap()) {
        let forged = forged.to_token();
        for cmd in [
            vec![&b"SET"[..], b"k", b"forged", b"CONTEXT", forged.as_bytes()],
            vec![&b"DEL"[..], b"k", b"CONTEXT", forged.as_bytes()],
        ] {
            let reply = resp(&mut conn, &cmd).await;
            assert!(
                reply.starts_with("-ERR context is not valid"),
                "{what}: {reply}"
            );
        }
    }
    let got = resp(&mut conn, &[b"GET", b"k"]).await;
    assert!(got.starts_with("*2\r\n$2\r\nv1\r\n"), "{got}");
    let set = [&b"SET"[..], b"k", b"v2", b"CONTEXT", token.as_bytes()];
    assert_eq!(resp(&mut conn, &set).await, "+OK\r\n");
    let got = resp(&mut conn, &[b"GET", b"k"]).await;
    assert!(got.starts_with("*2\r\n$2\r\nv2\r\n"), "one sibling: {got}");

    // HTTP: the context comes in X-Cairn-Context and goes back in it.
    let http = node.frontends().http_plaintext.unwrap();
    let request = |text: String| async move {
        let mut conn = TcpStream::connect(http).await.unwrap();
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
    let put = |context: Option<String>, value: &'static str| {
        let header = context.map_or(String::new(), |c| format!("X-Cairn-Context: {c}\r\n"));
        format!(
            "PUT /kv/h HTTP/1.1\r\nHost: x\r\n{header}Content-Length: {}\r\nConnection: close\r\n\r\n{value}",
            value.len()
        )
    };
    let get = "GET /kv/h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned();
    assert!(request(put(None, "h1")).await.starts_with("HTTP/1.1 200"));
    let read = request(get.clone()).await;
    // Header names are case-insensitive, tokens are not: the token is cut from the line as is.
    let token = read
        .lines()
        .find(|l| l.to_lowercase().starts_with("x-cairn-context: "))
        .unwrap_or_else(|| panic!("no context in {read}"))["x-cairn-context: ".len()..]
        .trim()
        .to_owned();
    let genuine = Context::from_token(&token).unwrap();
    for (what, forged) in forgeries(&genuine, &Context::from_token(&other).unwrap()) {
        let answer = request(put(Some(forged.to_token()), "forged")).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("context is not valid"),
            "{what}: {answer}"
        );
    }
    assert!(request(get.clone()).await.ends_with("h1"));
    assert!(request(put(Some(token), "h2"))
        .await
        .starts_with("HTTP/1.1 200"));
    let read = request(get).await;
    assert!(
        read.starts_with("HTTP/1.1 200") && read.ends_with("h2"),
        "one value: {read}"
    );
    node.shutdown().await.unwrap();
}
