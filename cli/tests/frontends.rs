//! The node's front ends met by real clients against a real `cairn dev` cluster: redis-cli,
//! redis-py and redis-benchmark on the RESP port, curl and schemathesis on the HTTP API, and a
//! Prometheus server and promtool on `/metrics`. A missing tool fails the test, naming what
//! installs it (`.ci/run` does).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{wait_for, Dev, Proc};
use rustix::process::Signal;

/// How long a scrape-and-query loop may take to see the written counters.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);

/// Fails the test unless `tool` runs, saying what installs it.
fn require(tool: &str, installed_by: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{tool}` is missing: this test needs it, and `.ci/run` installs it ({installed_by})"
    );
}

/// A front end's TLS address as node1's config gives it.
fn addr(dev: &Dev, node: &str, frontend: &str) -> SocketAddr {
    let config =
        cairn_node::NodeConfig::load(&dev.dir().join(node).join("node.toml")).expect("node.toml");
    let section = match frontend {
        "resp" => config.resp,
        "http" => config.http,
        "metrics" => config.metrics,
        _ => panic!("no front end {frontend}"),
    };
    section
        .listen
        .unwrap_or_else(|| panic!("cairn dev gave {node} no {frontend} listener"))
}

struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn tls(dir: &Path) -> Tls {
    Tls {
        ca: dir.join("ca.pem"),
        cert: dir.join("client/client.pem"),
        key: dir.join("client/client.key"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `redis-cli --tls … ARGS` against `resp`, with or without the client certificate.
fn redis_cli(resp: SocketAddr, tls: &Tls, with_cert: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
    if with_cert {
        cmd.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
    }
    cmd.arg("-h")
        .arg(resp.ip().to_string())
        .arg("-p")
        .arg(resp.port().to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli")
}

/// The lines redis-cli printed for `ARGS`, which must have succeeded.
fn cli_lines(resp: SocketAddr, tls: &Tls, args: &[&str]) -> Vec<String> {
    let out = redis_cli(resp, tls, true, args);
    assert!(out.status.success(), "redis-cli {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn redis_cli_siblings_loop_over_tls_and_refused_without_a_certificate() {
    require("redis-cli", "apt-get install redis-tools");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(3));
    let resp = addr(&dev, "node1", "resp");
    let tls = tls(dev.dir());

    assert_eq!(cli_lines(resp, &tls, &["PING"]), ["PONG"]);
    // Two writes without a context: two siblings, then the context as the last element.
    assert_eq!(cli_lines(resp, &tls, &["SET", "k", "v1"]), ["OK"]);
    assert_eq!(cli_lines(resp, &tls, &["SET", "k", "v2"]), ["OK"]);
    let got = cli_lines(resp, &tls, &["GET", "k"]);
    assert_eq!(got.len(), 3, "GET of two siblings: {got:?}");
    let mut values = got[..2].to_vec();
    values.sort();
    assert_eq!(values, ["v1", "v2"]);
    let context = got[2].clone();
    assert!(!context.is_empty());
    // One value insisted on while there are two: an error naming the count.
    let one = cli_lines(resp, &tls, &["GET", "k", "ONE"]);
    assert!(
        one[0].contains("SIBLINGS") && one[0].contains("2 siblings"),
        "{one:?}"
    );
    // A write with the read's context resolves them, seen from another node as well.
    assert_eq!(
        cli_lines(resp, &tls, &["SET", "k", "v3", "CONTEXT", &context]),
        ["OK"]
    );
    let other = addr(&dev, "node2", "resp");
    let got = cli_lines(other, &tls, &["GET", "k"]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], "v3");
    assert_eq!(cli_lines(resp, &tls, &["GET", "k", "ONE"]), ["v3"]);
    assert_eq!(cli_lines(resp, &tls, &["DEL", "k"]), ["1"]);
    assert_eq!(cli_lines(resp, &tls, &["EXISTS", "k"]), ["0"]);
    assert_eq!(cli_lines(resp, &tls, &["MSET", "a", "1", "b", "2"]), ["OK"]);
    assert_eq!(cli_lines(resp, &tls, &["SELECT", "0"]), ["OK"]);
    let refused = cli_lines(resp, &tls, &["AUTH", "secret"]);
    assert!(refused[0].contains("TLS certificate"), "{refused:?}");
    let unknown = cli_lines(resp, &tls, &["FLUSHALL"]);
    assert!(
        unknown[0].contains("unknown command 'FLUSHALL'"),
        "{unknown:?}"
    );
    let info = cli_lines(resp, &tls, &["INFO"]);
    assert!(info.iter().any(|l| l == "node:node1"), "{info:?}");

    // Without a client certificate the handshake is refused: no answer, a failure.
    let out = redis_cli(resp, &tls, false, &["PING"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PONG"),
        "answered without a certificate: {}",
        text(&out)
    );
}

#[test]
fn redis_py_siblings_loop_pipelining_and_resp3() {
    require("python3", "Debian's python3");
    common::require_python_package("redis");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(3));
    let resp = addr(&dev, "node2", "resp");
    let tls = tls(dev.dir());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/redis_py.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(resp.ip().to_string())
        .arg(resp.port().to_string())
        .arg(&tls.ca)
        .arg(&tls.cert)
        .arg(&tls.key)
        .output()
        .expect("run python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "redis-py: {}",
        text(&out)
    );
}

#[test]
fn redis_benchmark_set_get_runs_without_errors() {
    require("redis-benchmark", "apt-get install redis-tools");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(3));
    let resp = addr(&dev, "node1", "resp");
    let tls = tls(dev.dir());
    let requests = std::env::var("CAIRN_REDIS_BENCH_REQUESTS").unwrap_or_else(|_| "2000".into());
    let out = Command::new("redis-benchmark")
        .arg("--tls")
        .arg("--cacert")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .args(["-h", &resp.ip().to_string(), "-p", &resp.port().to_string()])
        // Random keys (-r): without it every SET goes to one key, and blind writes to one key
        // pile up as siblings until SIBLINGS_MAX refuses them, as they should.
        .args([
            "-t", "set,get", "-n", &requests, "-r", "100000", "-c", "16", "-q",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-benchmark");
    let all = text(&out);
    eprintln!("redis-benchmark against a 3-node dev cluster:\n{all}");
    assert!(out.status.success(), "redis-benchmark failed: {all}");
    for test in ["SET:", "GET:"] {
        assert!(all.contains(test), "no {test} figures: {all}");
    }
    // It warns that CONFIG GET save/appendonly answer nothing (Cairn has no such settings); an
    // error answer to any SET or GET would be printed as "Error".
    assert!(
        !all.to_lowercase().contains("error"),
        "redis-benchmark saw errors: {all}"
    );
}

/// `curl` with the dev client certificate: status code, headers and body.
struct Curl {
    status: u16,
    headers: String,
    body: String,
}

fn curl(tls: &Tls, with_cert: bool, args: &[&str]) -> Result<Curl, String> {
    let headers = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .arg("-D")
        .arg(headers.path())
        .arg("--cacert")
        .arg(&tls.ca);
    if with_cert {
        cmd.arg("--cert").arg(&tls.cert).arg("--key").arg(&tls.key);
    }
    let out = cmd.args(args).output().expect("run curl");
    if !out.status.success() {
        return Err(text(&out));
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').expect("the status line");
    Ok(Curl {
        status: code.trim().parse().expect("a status code"),
        headers: std::fs::read_to_string(headers.path()).unwrap(),
        body: body.to_owned(),
    })
}

impl Curl {
    fn context(&self) -> String {
        self.headers
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-cairn-context")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no X-Cairn-Context in {}", self.headers))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

#[test]
fn curl_200_300_404_413_503_and_the_context_round_trip() {
    require("curl", "apt-get install curl");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(3));
    let http = addr(&dev, "node1", "http");
    let tls = tls(dev.dir());
    let url = |path: &str| format!("https://{http}{path}");

    let missing = curl(&tls, true, &[&url("/kv/nothing")]).unwrap();
    assert_eq!(missing.status, 404, "{}", missing.body);
    missing.context();

    let put = |value: &str, context: Option<&str>| {
        let header = context.map(|c| format!("X-Cairn-Context: {c}"));
        let mut args = vec!["-X", "PUT", "--data-binary", value];
        if let Some(h) = &header {
            args.extend(["-H", h]);
        }
        let u = url("/kv/k");
        args.push(&u);
        curl(&tls, true, &args).unwrap()
    };
    assert_eq!(put("v1", None).status, 200);
    assert_eq!(put("v2", None).status, 200);
    let siblings = curl(&tls, true, &[&url("/kv/k")]).unwrap();
    assert_eq!(siblings.status, 300, "{}", siblings.body);
    let json = siblings.json();
    let mut values: Vec<&str> = json["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, ["v1", "v2"]);
    // The context from the header resolves both siblings.
    let context = siblings.context();
    assert_eq!(json["context"], context.as_str());
    let resolved = put("v3", Some(&context));
    assert_eq!(resolved.status, 200);
    assert_eq!(resolved.json()["siblings"].as_array().unwrap().len(), 1);
    let one = curl(&tls, true, &[&url("/kv/k?r=3&timeout=5000")]).unwrap();
    assert_eq!((one.status, one.body.as_str()), (200, "v3"));

    // Over VALUE_BYTES_MAX: 413 naming the limit.
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; cairn_proto::limits::VALUE_BYTES_MAX + 1]).unwrap();
    let data = format!("@{}", big.display());
    let u = url("/kv/big");
    let too_large = curl(&tls, true, &["-X", "PUT", "--data-binary", &data, &u]).unwrap();
    assert_eq!(too_large.status, 413, "{}", too_large.body);
    assert!(
        too_large.body.contains("VALUE_BYTES_MAX"),
        "{}",
        too_large.body
    );
    // A bad option is the client's error.
    let bad = curl(&tls, true, &[&url("/kv/k?r=abc")]).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    // Without a client certificate there is no answer at all.
    assert!(curl(&tls, false, &[&url("/kv/k")]).is_err());
    let doc = curl(&tls, true, &[&url("/openapi.json")]).unwrap();
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json()["openapi"], "3.0.3");

    // A replica killed: a write needing all three fails with 503 and the quorum's facts.
    let pid = dev.node_pid("node3");
    common::kill(pid, Signal::KILL);
    wait_for("node3 to die", Duration::from_secs(10), || {
        (!common::alive(pid)).then_some(())
    });
    let u = url("/kv/k?w=3&timeout=2000");
    let failed = curl(&tls, true, &["-X", "PUT", "--data-binary", "v4", &u]).unwrap();
    assert_eq!(failed.status, 503, "{}", failed.body);
    let json = failed.json();
    assert_eq!(json["kind"], "quorum_not_reached", "{json}");
    assert_eq!(json["needed"], 3, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("3 acks needed"),
        "{json}"
    );
}

#[test]
fn schemathesis_checks_the_http_api_against_its_openapi_document() {
    require("st", "pip install schemathesis");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(1));
    let http = addr(&dev, "node1", "http");
    let tls = tls(dev.dir());
    let examples = std::env::var("CAIRN_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "60".into());
    let out = Command::new("st")
        .arg("run")
        .arg(format!("https://{http}/openapi.json"))
        .arg("--tls-verify")
        .arg(&tls.ca)
        .arg("--request-cert")
        .arg(&tls.cert)
        .arg("--request-cert-key")
        .arg(&tls.key)
        .args([
            "--checks",
            "all",
            "--max-examples",
            &examples,
            "--workers",
            "1",
        ])
        // A context is valid only if this cluster printed it, and R/W must not exceed the
        // cluster's N: no schema can say either, so schema-valid requests may rightly get 400.
        // A 503 (a quorum missed on a loaded machine) is a documented answer, not a bug; an
        // undocumented status such as 500 still fails status_code_conformance.
        .args([
            "--exclude-checks",
            "positive_data_acceptance,not_a_server_error",
        ])
        // Its example database goes to the temporary directory, not the source tree.
        .current_dir(tmp.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{}",
        text(&out)
    );
    // It ran every operation, not none.
    assert!(
        text(&out).contains("Tested: 3"),
        "schemathesis tested less than the 3 operations:\n{}",
        text(&out)
    );
}

#[test]
fn prometheus_scrapes_a_dev_cluster_and_promtool_accepts_the_metrics() {
    require("prometheus", "apt-get install prometheus");
    require("promtool", "apt-get install prometheus");
    require("curl", "apt-get install curl");
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("c"), Some(3));
    let tls = tls(dev.dir());
    for i in 0..20 {
        dev.run(&["put", &format!("m{i}"), "v"]).ok();
    }
    let metrics = addr(&dev, "node1", "metrics");
    let page = curl(&tls, true, &[&format!("https://{metrics}/metrics")]).unwrap();
    assert_eq!(page.status, 200);
    for name in [
        "cairn_requests_total",
        "cairn_request_duration_seconds_bucket",
        "cairn_storage_commit_seconds_bucket",
        "cairn_members{status=\"up\"} 3",
        "cairn_member_phi",
        "cairn_hints_pending",
        "cairn_anti_entropy_exchanges_total",
        "cairn_connections_open",
    ] {
        assert!(page.body.contains(name), "no {name} in:\n{}", page.body);
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}",
        text(&checked)
    );

    // A real Prometheus scrapes all three nodes over TLS with the dev client certificate.
    let targets: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| format!("'{}'", addr(&dev, n, "metrics")))
        .collect();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cairn\n    scheme: https\n    tls_config:\n      ca_file: '{}'\n      cert_file: '{}'\n      key_file: '{}'\n    static_configs:\n      - targets: [{}]\n",
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = free_tcp_port();
    let _prometheus = Proc::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let query = format!(
        "http://127.0.0.1:{web}/api/v1/query?query=sum(cairn_requests_total%7Bop%3D%22put%22%2Coutcome%3D%22ok%22%7D)"
    );
    let up_query =
        format!("http://127.0.0.1:{web}/api/v1/query?query=sum(up%7Bjob%3D%22cairn%22%7D)");
    let value = |url: &str| -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", url])
            .output()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let puts = wait_for(
        "Prometheus to scrape the put counters",
        PROMETHEUS_DEADLINE,
        || value(&query).filter(|v| *v >= 20.0),
    );
    let up = wait_for(
        "Prometheus to see three targets up",
        PROMETHEUS_DEADLINE,
        || value(&up_query).filter(|v| *v == 3.0),
    );
    eprintln!("Prometheus: {puts} puts answered ok, {up} targets up");
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
