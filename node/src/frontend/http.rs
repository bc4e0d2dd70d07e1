//! The HTTP/1.1 front end: the JSON key-value API with Riak's conventions (200 for one value,
//! 300 Multiple Choices listing the siblings, 404, the context in `X-Cairn-Context`), its OpenAPI
//! document, and — on the metrics listener — `/metrics` in Prometheus text format.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use cairn_proto::{
    limits::VALUE_BYTES_MAX, Context, ErrorReply, GetReply, LimitError, ReadOptions, Request,
    Response as NodeResponse, WriteOptions,
};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tracing::debug;

use super::{authorize, ClientId, IoObj};
use crate::limits::HTTP_BODY_BYTES_MAX;
use crate::server::Shared;

/// The header carrying a key's causal context, out on reads and writes, in on writes.
pub const CONTEXT_HEADER: &str = "x-cairn-context";

/// The OpenAPI document of the key-value API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

const _: () = assert!(HTTP_BODY_BYTES_MAX >= VALUE_BYTES_MAX);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `/kv/{key}` and `/openapi.json`.
    Kv,
    /// `/metrics`.
    Metrics,
}

type Reply = hyper::Response<Full<Bytes>>;

/// Serves one HTTP/1.1 connection (keep-alive and pipelining are hyper's).
pub(crate) async fn serve(io: Box<dyn IoObj>, client: ClientId, shared: Arc<Shared>, api: Api) {
    let client = Arc::new(client);
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(route(req, &client, &shared, api).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await
    {
        debug!("HTTP connection: {e}");
    }
}

async fn route(
    req: hyper::Request<Incoming>,
    client: &ClientId,
    shared: &Shared,
    api: Api,
) -> Reply {
    let path = req.uri().path().to_owned();
    match (api, path.as_str()) {
        (Api::Metrics, "/metrics") => match *req.method() {
            Method::GET => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                shared.metrics(),
            ),
            _ => not_allowed("GET"),
        },
        (Api::Kv, "/openapi.json") => match *req.method() {
            Method::GET => text(StatusCode::OK, "application/json", OPENAPI.to_owned()),
            _ => not_allowed("GET"),
        },
        (Api::Kv, p) if p.starts_with("/kv/") => {
            let key = percent_encoding::percent_decode_str(&p["/kv/".len()..]).collect::<Vec<u8>>();
            let started = Instant::now();
            let op = match *req.method() {
                Method::GET => "get",
                Method::PUT => "put",
                Method::DELETE => "delete",
                _ => return not_allowed("GET, PUT, DELETE"),
            };
            let reply = kv(req, key, client, shared).await;
            let outcome = reply.1;
            crate::metrics::record_request("http", op, &outcome, started);
            reply.0
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no resource at {path}; the API is /kv/{{key}}, its description /openapi.json"),
            None,
        ),
    }
}

/// Query parameters of a read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    r: Option<u8>,
    pr: Option<u8>,
    #[serde(default, deserialize_with = "timeout_ms")]
    timeout: Option<u32>,
}

/// Query parameters of a write.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    w: Option<u8>,
    pw: Option<u8>,
    #[serde(default, deserialize_with = "timeout_ms")]
    timeout: Option<u32>,
}

/// A timeout in milliseconds, at least 1: a request given no time at all could only fail.
fn timeout_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<u32>::deserialize(d)? {
        Some(0) => Err(serde::de::Error::custom("timeout must be at least 1 ms")),
        t => Ok(t),
    }
}

/// Answers a `/kv/{key}` request; also returns the node's answer (or a stand-in for a refusal
/// before the node was asked) for the request metrics.
async fn kv(
    req: hyper::Request<Incoming>,
    key: Vec<u8>,
    client: &ClientId,
    shared: &Shared,
) -> (Reply, NodeResponse) {
    let query = req.uri().query().unwrap_or("").to_owned();
    let refused = |status, kind, message: String| {
        let reply = error(status, kind, message.clone(), None);
        (
            reply,
            NodeResponse::Error(ErrorReply::Malformed { reason: message }),
        )
    };
    let context = match req.headers().get(CONTEXT_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().map(Context::from_token) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return refused(StatusCode::BAD_REQUEST, "bad_context", e.to_string()),
            None => {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "bad_context",
                    "X-Cairn-Context is not a token printed by a read".into(),
                )
            }
        },
    };
    match *req.method() {
        Method::GET => {
            let q: ReadQuery = match serde_urlencoded::from_str(&query) {
                Ok(q) => q,
                Err(e) => {
                    return refused(StatusCode::BAD_REQUEST, "bad_query", format!("query: {e}"))
                }
            };
            let opts = ReadOptions {
                r: q.r,
                pr: q.pr,
                timeout_ms: q.timeout,
                ..ReadOptions::default()
            };
            let resp = run(client, shared, Request::Get { key, opts }).await;
            (read_reply(&resp), resp)
        }
        Method::PUT => {
            let q: WriteQuery = match serde_urlencoded::from_str(&query) {
                Ok(q) => q,
                Err(e) => {
                    return refused(StatusCode::BAD_REQUEST, "bad_query", format!("query: {e}"))
                }
            };
            let value = match body(req).await {
                Ok(v) => v,
                Err(reply) => {
                    return (
                        reply,
                        NodeResponse::Error(ErrorReply::Malformed {
                            reason: "body refused".into(),
                        }),
                    )
                }
            };
            let put = Request::Put {
                key,
                value,
                context: context.unwrap_or_default(),
                opts: write_opts(&q),
            };
            let resp = run(client, shared, put).await;
            (write_reply(&resp), resp)
        }
        Method::DELETE => {
            let q: WriteQuery = match serde_urlencoded::from_str(&query) {
                Ok(q) => q,
                Err(e) => {
                    return refused(StatusCode::BAD_REQUEST, "bad_query", format!("query: {e}"))
                }
            };
            // Without a context, delete what a read finds now (as `cairn delete` does).
            let context = match context {
                Some(c) => c,
                None => {
                    let get = Request::Get {
                        key: key.clone(),
                        opts: ReadOptions::default(),
                    };
                    match run(client, shared, get).await {
                        NodeResponse::Value(v) if v.siblings.is_empty() => {
                            let resp = NodeResponse::Value(v);
                            return (read_reply(&resp), resp);
                        }
                        NodeResponse::Value(v) => v.context,
                        other => return (write_reply(&other), other),
                    }
                }
            };
            let delete = Request::Delete {
                key,
                context,
                opts: write_opts(&q),
            };
            let resp = run(client, shared, delete).await;
            (write_reply(&resp), resp)
        }
        _ => (
            not_allowed("GET, PUT, DELETE"),
            NodeResponse::Error(ErrorReply::Malformed {
                reason: "method not allowed".into(),
            }),
        ),
    }
}

fn write_opts(q: &WriteQuery) -> WriteOptions {
    WriteOptions {
        w: q.w,
        pw: q.pw,
        timeout_ms: q.timeout,
    }
}

async fn run(client: &ClientId, shared: &Shared, req: Request) -> NodeResponse {
    match authorize(client, &req) {
        Ok(()) => shared.frontend_request(req).await,
        Err(e) => NodeResponse::Error(e),
    }
}

/// Reads a request body of at most `HTTP_BODY_BYTES_MAX`; a longer one is answered 413 naming
/// `VALUE_BYTES_MAX` — checked against `Content-Length` before a byte is read.
async fn body(req: hyper::Request<Incoming>) -> Result<Vec<u8>, Reply> {
    let too_large = |len: Option<u64>| {
        let e = LimitError::ValueTooLarge {
            len: len.unwrap_or(HTTP_BODY_BYTES_MAX as u64 + 1),
            max: VALUE_BYTES_MAX as u64,
        };
        let message = match len {
            Some(_) => e.to_string(),
            None => format!("value of more than {VALUE_BYTES_MAX} bytes exceeds VALUE_BYTES_MAX ({VALUE_BYTES_MAX} bytes)"),
        };
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
            message,
            Some("VALUE_BYTES_MAX"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|l| *l > HTTP_BODY_BYTES_MAX as u64) {
        return Err(too_large(Some(len)));
    }
    match Limited::new(req.into_body(), HTTP_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large(None))
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("reading the body: {e}"),
            None,
        )),
    }
}

/// 200 with the value, 300 with the siblings, 404; the context in a header every time.
fn read_reply(resp: &NodeResponse) -> Reply {
    match resp {
        NodeResponse::Value(v) => {
            let mut reply = match v.siblings.len() {
                0 => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the key holds no value".into(),
                    None,
                ),
                1 => hyper::Response::builder()
                    .status(StatusCode::OK)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(Bytes::from(v.siblings[0].value.clone())))
                    .expect("a valid response"),
                _ => json_reply(StatusCode::MULTIPLE_CHOICES, &siblings_json(v)),
            };
            set_context(&mut reply, v);
            reply
        }
        other => failure(other),
    }
}

/// 200 with the siblings the key holds after the write, and their context.
fn write_reply(resp: &NodeResponse) -> Reply {
    match resp {
        NodeResponse::Written(v) => {
            let mut reply = json_reply(StatusCode::OK, &siblings_json(v));
            set_context(&mut reply, v);
            reply
        }
        other => failure(other),
    }
}

fn set_context(reply: &mut Reply, v: &GetReply) {
    let token = HeaderValue::from_str(&v.context.to_token()).expect("base64url is a valid header");
    reply.headers_mut().insert(CONTEXT_HEADER, token);
}

fn siblings_json(v: &GetReply) -> serde_json::Value {
    use base64::Engine as _;
    json!({
        "siblings": v.siblings.iter().map(|s| json!({
            "value": std::str::from_utf8(&s.value).ok(),
            "value_base64": base64::engine::general_purpose::STANDARD.encode(&s.value),
            "dot": s.dot.to_string(),
        })).collect::<Vec<_>>(),
        "context": v.context.to_token(),
    })
}

/// A node error as an HTTP status with the facts the CLI prints.
fn failure(resp: &NodeResponse) -> Reply {
    let NodeResponse::Error(e) = resp else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unexpected",
            format!("unexpected answer from the node: {resp:?}"),
            None,
        );
    };
    let kind = crate::metrics::outcome(resp);
    let (status, limit) = match e {
        ErrorReply::Limit(LimitError::KeyEmpty) => (StatusCode::BAD_REQUEST, None),
        ErrorReply::Limit(l) => (StatusCode::PAYLOAD_TOO_LARGE, Some(limit_name(l))),
        ErrorReply::BadContext { .. }
        | ErrorReply::Malformed { .. }
        | ErrorReply::BadOptions { .. }
        | ErrorReply::UnsupportedVersion { .. } => (StatusCode::BAD_REQUEST, None),
        ErrorReply::Forbidden { .. } => (StatusCode::FORBIDDEN, None),
        // The node cannot make writes durable now (its disk failed, or its own write missed the
        // deadline): unavailable, as a retry elsewhere or later may succeed.
        ErrorReply::Storage { .. }
        | ErrorReply::QuorumNotReached { .. }
        | ErrorReply::Overloaded { .. }
        | ErrorReply::ShuttingDown
        | ErrorReply::Unreachable { .. }
        | ErrorReply::NoRing { .. }
        | ErrorReply::Membership { .. }
        | ErrorReply::Refused { .. } => (StatusCode::SERVICE_UNAVAILABLE, None),
    };
    let mut message = e.to_string();
    let mut body = json!({ "error": message.clone(), "kind": kind });
    if let ErrorReply::QuorumNotReached {
        kind: needed_kind,
        needed,
        got,
        failed,
    } = e
    {
        if *got > 0 && needed_kind.contains("acks") {
            message.push_str(" (the replicas that acknowledged keep the write)");
            body["error"] = json!(message);
        }
        body["needed"] = json!(needed);
        body["got"] = json!(got);
        body["what"] = json!(needed_kind);
        body["failed"] = json!(failed
            .iter()
            .map(|f| json!({"node": f.node, "reason": f.reason}))
            .collect::<Vec<_>>());
    }
    if let Some(limit) = limit {
        body["limit"] = json!(limit);
    }
    json_reply(status, &body)
}

fn limit_name(l: &LimitError) -> &str {
    match l {
        LimitError::KeyEmpty | LimitError::KeyTooLarge { .. } => "KEY_BYTES_MAX",
        LimitError::ValueTooLarge { .. } => "VALUE_BYTES_MAX",
        LimitError::TooManySiblings { .. } => "SIBLINGS_MAX",
        LimitError::VersionVectorTooLarge { .. } => "VV_ENTRIES_MAX",
        LimitError::ObjectTooLarge { .. } => "OBJECT_BYTES_MAX",
        LimitError::ContextTooLarge { .. } => "CONTEXT_BYTES_MAX",
        LimitError::AddressTooLong { .. } => "ADDRESS_BYTES_MAX",
        LimitError::NameTooLong { .. } => "NODE_NAME_BYTES_MAX",
        LimitError::MessageTooLarge { .. } => "PEER_MESSAGE_BYTES_MAX",
        LimitError::TooManyKeyHashes { .. } => "KEY_HASHES_PER_REQUEST_MAX",
        LimitError::TooManyTombstoneProbes { .. } => "TOMBSTONE_PROBES_PER_REQUEST_MAX",
        LimitError::TooManyPartitions { .. } => "PARTITION_SIZES_PER_REQUEST_MAX",
        LimitError::TooManyBatchItems { .. } => "PEER_BATCH_ITEMS_MAX",
        LimitError::OverHardLimit { limit, .. } => limit,
        LimitError::FrameTooLarge { .. } => "FRAME_BYTES_MAX",
    }
}

fn error(status: StatusCode, kind: &str, message: String, limit: Option<&str>) -> Reply {
    let mut body = json!({ "error": message, "kind": kind });
    if let Some(limit) = limit {
        body["limit"] = json!(limit);
    }
    json_reply(status, &body)
}

fn not_allowed(allow: &'static str) -> Reply {
    let mut reply = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this resource answers {allow}"),
        None,
    );
    reply
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    reply
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    text(status, "application/json", body.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    hyper::Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_json_and_names_every_status() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let get = &doc["paths"]["/kv/{key}"]["get"]["responses"];
        for status in ["200", "300", "400", "404", "413", "503"] {
            assert!(get.get(status).is_some(), "GET lacks {status}");
        }
    }

    #[test]
    fn a_quorum_failure_is_503_with_the_facts() {
        let resp = NodeResponse::Error(ErrorReply::QuorumNotReached {
            kind: "acks".into(),
            needed: 3,
            got: 2,
            failed: vec![cairn_proto::ReplicaFailure {
                node: "node3".into(),
                reason: "timed out".into(),
            }],
        });
        let reply = write_reply(&resp);
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn limits_are_413_naming_the_limit() {
        let resp = NodeResponse::Error(ErrorReply::Limit(LimitError::KeyTooLarge {
            len: 2000,
            max: 1024,
        }));
        assert_eq!(read_reply(&resp).status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
