//! The client commands against a real one-node `cairn dev` cluster (real processes, QUIC on
//! loopback): the sibling loop, limits, foreign certificates, exit codes, and the ways a value
//! can be given. Several nodes: tests/cluster.rs.

mod common;

use cairn_proto::limits::VALUE_BYTES_MAX;
use common::{cairn, get_json, run_in, run_with_stdin, values, Dev};

#[test]
fn concurrent_writes_become_siblings_and_a_write_with_their_context_resolves_them() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));

    dev.run(&["put", "cart", "apple"]).ok();
    let second = dev.run(&["put", "cart", "pear"]).ok();
    assert!(
        second.contains("2 siblings"),
        "put tells about siblings: {second}"
    );

    let (siblings, context) = get_json(dir.path(), "cart");
    let mut seen: Vec<&str> = siblings.iter().map(|(v, _)| v.as_str()).collect();
    seen.sort();
    assert_eq!(seen, ["apple", "pear"]);
    assert_ne!(siblings[0].1, siblings[1].1, "each sibling has its own dot");

    let text = dev.run(&["get", "cart"]).ok();
    assert!(text.starts_with("(2 siblings)\n"), "{text}");
    assert!(text.contains(&format!("context: {context}\n")), "{text}");

    let out = dev
        .run(&["put", "cart", "apple+pear", "--context", &context])
        .ok();
    assert!(out.starts_with("ok\ncontext: "), "{out}");
    assert_eq!(values(dir.path(), "cart"), ["apple+pear"]);
    assert_eq!(
        dev.run(&["get", "cart"]).ok().lines().next(),
        Some("apple+pear")
    );

    // A delete with the context of what was read removes it.
    let (_, context) = get_json(dir.path(), "cart");
    dev.run(&["delete", "cart", "--context", &context]).ok();
    assert_eq!(dev.run(&["get", "cart"]).code, Some(1));
}

#[test]
fn a_value_over_the_limit_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; VALUE_BYTES_MAX + 1]).unwrap();

    let run = dev.run(&["put", "big", "--file", big.to_str().unwrap()]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("VALUE_BYTES_MAX"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");

    let get = dev.run(&["get", "big", "--json"]);
    assert_eq!(get.code, Some(1), "{get:?}");
    assert_eq!(get.json()["siblings"], serde_json::json!([]));

    // Exactly the limit is fine.
    std::fs::write(&big, vec![b'x'; VALUE_BYTES_MAX]).unwrap();
    dev.run(&["put", "big", "--file", big.to_str().unwrap()])
        .ok();
}

#[test]
fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));
    dev.run(&["put", "k", "original"]).ok();

    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().to_str().unwrap();
    let client_dir = other.path().join("client");
    let out = cairn()
        .args(["cert", "ca", "--dir", other_dir, "--name", "other"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = cairn()
        .args([
            "cert", "client", "--ca-dir", other_dir, "--name", "mallory", "--out",
        ])
        .arg(&client_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cert = client_dir.join("client.pem");
    let key = client_dir.join("client.key");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // Trusting the real CA (so the node's certificate checks out): the node refuses the client.
    let run = dev.run(&["put", "k", "evil", "--cert", cert, "--key", key]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("certificate"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");

    // Trusting only the other CA: the client refuses the node.
    let ca = other.path().join("ca.pem");
    let run = dev.run(&[
        "get",
        "k",
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert,
        "--key",
        key,
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");

    assert_eq!(
        values(dir.path(), "k"),
        ["original"],
        "the key is untouched"
    );

    // `cert ca` refuses to replace a CA.
    let out = cairn()
        .args(["cert", "ca", "--dir", other_dir])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn exit_codes_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));

    let run = dev.run(&["get", "missing"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr, "not found: missing\n");

    let run = dev.run(&["get", "missing", "--json"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        run.stdout,
        "{\"key\":\"missing\",\"siblings\":[],\"context\":\"\"}\n"
    );

    for usage in [
        &["get", "k", "--bogus"][..],
        &["put", "k", "v", "--file", "/dev/null"],
        &["get"],
        &["put", "k", "v", "--timeout", "0"],
    ] {
        let run = run_in(dir.path(), usage);
        assert_eq!(run.code, Some(2), "{usage:?}: {run:?}");
    }
    // Quorum flags the CLI itself refuses, and a bad boolean.
    for usage in [
        &["get", "k", "--r", "0"][..],
        &["put", "k", "v", "--w", "0"],
        &["get", "k", "--notfound-ok", "maybe"],
        &["get", "k", "--r", "256"],
    ] {
        let run = run_in(dir.path(), usage);
        assert_eq!(run.code, Some(2), "{usage:?}: {run:?}");
    }
    // R above N is refused by the node (N = 1 here), as a one-line usage error.
    let run = dev.run(&["get", "k", "--r", "2"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.starts_with("error: invalid options: "),
        "{run:?}"
    );
    assert!(run.stderr.contains("N=1"), "{run:?}");

    // `dev` with a node count out of range, or other than the directory's, is refused.
    for nodes in ["0", "17"] {
        let run = cairn()
            .args(["dev", "--nodes", nodes, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "--nodes {nodes}: {run:?}");
    }
    let run = cairn()
        .args(["dev", "--nodes", "2", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("holds a 1-node cluster; --nodes 2 would change it"),
        "{stderr}"
    );
    assert!(!dir.path().join("node2").exists(), "nothing was added");

    let run = dev.run(&["put", "k", "v", "--context", "not a token!"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: context is not a valid token"),
        "{run:?}"
    );

    let nowhere = tempfile::tempdir().unwrap();
    let run = run_in(nowhere.path(), &["get", "k"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("cairn dev"), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

#[test]
fn values_come_from_arguments_files_or_stdin_and_flags_go_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));
    let cluster = dir.path().to_str().unwrap();

    let out = run_with_stdin(dir.path(), &["put", "from-stdin"], b"piped value");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(values(dir.path(), "from-stdin"), ["piped value"]);

    let file = dir.path().join("value.txt");
    std::fs::write(&file, "file value").unwrap();
    let file = file.to_str().unwrap();
    dev.run(&["put", "from-file", "--file", file]).ok();
    assert_eq!(values(dir.path(), "from-file"), ["file value"]);

    // Flags before the positionals, and the JSON form of a write.
    let out = cairn()
        .args([
            "put",
            "--cluster",
            cluster,
            "--json",
            "--node",
            "node1",
            "early",
            "v",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["key"], "early");
    assert!(json["context"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(json.as_object().unwrap().len(), 2);
    let out = cairn()
        .args(["get", "--json", "--cluster", cluster, "early"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Binary values: base64 in text, a {"base64":..} object in JSON.
    let bin = dir.path().join("value.bin");
    std::fs::write(&bin, [0xff, 0x00, 0x01]).unwrap();
    dev.run(&["put", "bin", "--file", bin.to_str().unwrap()])
        .ok();
    let text = dev.run(&["get", "bin"]).ok();
    assert_eq!(text.lines().next(), Some("base64:/wAB"));
    let json = dev.run(&["get", "bin", "--json"]).json();
    assert_eq!(json["siblings"][0]["value"]["base64"], "/wAB");

    // The address of a node works as well as its name.
    let addr = dev
        .stdout
        .iter()
        .find(|l| l.starts_with("node1 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("dev prints node1's address")
        .to_owned();
    let text = dev.run(&["get", "from-file", "--node", &addr]).ok();
    assert_eq!(text.lines().next(), Some("file value"));
}

#[test]
fn get_local_prints_the_nodes_own_copy_with_the_admin_identity() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path(), Some(1));
    dev.run(&["put", "k", "v"]).ok();
    let out = dev.run(&["get", "k", "--local", "--node", "node1"]).ok();
    assert_eq!(out.lines().next(), Some("v"), "{out}");
    assert_eq!(
        dev.run(&["get", "absent", "--local", "--node", "node1"])
            .code,
        Some(1)
    );
    // With the data certificate instead of the admin one, the node refuses and says why.
    let client = dir.path().join("client");
    let refused = dev.run(&[
        "get",
        "k",
        "--local",
        "--node",
        "node1",
        "--cert",
        client.join("client.pem").to_str().unwrap(),
        "--key",
        client.join("client.key").to_str().unwrap(),
    ]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(refused.stderr.contains("admin"), "{refused:?}");
}
