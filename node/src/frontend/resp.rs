//! The Redis-protocol port: RESP2, and RESP3 after `HELLO 3`. A `GET` answers every sibling's
//! value and then the context (sucredb's convention), so a plain Redis client sees siblings; a
//! `SET` or `DEL` with `CONTEXT` supersedes exactly what that read returned. Commands of one
//! connection run in order, one after another, as in Redis: a pipeline's `SET` is seen by its
//! next `GET`.

use std::sync::Arc;
use std::time::Instant;

use cairn_proto::{Context, ErrorReply, GetReply, ReadOptions, Request, Response, WriteOptions};
use tokio::io::{
    AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, BufWriter,
};
use tracing::debug;

use super::{authorize, ClientId, IoObj};
use crate::limits::{RESP_ARGS_MAX, RESP_REQUEST_BYTES_MAX};
use crate::server::Shared;

/// Longest header line (`*<count>` or `$<length>`) of a RESP request.
const HEADER_LINE_BYTES_MAX: usize = 32;

/// One answer, in the shapes both protocol versions know.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`: the first word is the error code.
    Error(String),
    /// `:n`.
    Int(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// Nil (RESP2 `$-1`, RESP3 `_`).
    Null,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP3 `%`; RESP2 flattens it into an array).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    fn err(code: &str, text: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("{code} {text}"))
    }

    fn bulk(s: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(s.into())
    }

    fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// Appends the wire form for protocol version `proto` (2 or 3) to `out`.
    pub fn encode(&self, proto: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => line(out, b'+', &one_line(s)),
            Reply::Error(s) => line(out, b'-', &one_line(s)),
            Reply::Int(n) => line(out, b':', &n.to_string()),
            Reply::Bulk(b) => {
                line(out, b'$', &b.len().to_string());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', &items.len().to_string());
                for item in items {
                    item.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    line(out, b'%', &pairs.len().to_string());
                } else {
                    line(out, b'*', &(pairs.len() * 2).to_string());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, tag: u8, text: &str) {
    out.push(tag);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Simple strings and errors cannot carry line breaks.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Why a request could not be read; the connection is answered with it and closed, as Redis does.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The bytes are not RESP.
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// The request is larger than a node accepts.
    #[error(
        "Protocol error: request exceeds RESP_REQUEST_BYTES_MAX ({RESP_REQUEST_BYTES_MAX} bytes)"
    )]
    TooLarge,
    /// The command has more arguments than a node accepts.
    #[error("Protocol error: {count} arguments exceed RESP_ARGS_MAX ({RESP_ARGS_MAX})")]
    TooManyArgs {
        /// Arguments sent.
        count: u64,
    },
    /// The connection failed or closed mid-request.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one command: an array of bulk strings, or an inline command (a line of words, as telnet
/// users type). `None` when the client closed the connection between commands. Every length is
/// checked before the bytes it announces are read.
pub async fn read_command<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<Vec<u8>>>, RespError> {
    let first = match r.fill_buf().await?.first() {
        None => return Ok(None),
        Some(b) => *b,
    };
    if first != b'*' {
        let line = read_line(r, RESP_REQUEST_BYTES_MAX).await?;
        let words: Vec<Vec<u8>> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if words.len() > RESP_ARGS_MAX {
            return Err(RespError::TooManyArgs {
                count: words.len() as u64,
            });
        }
        return Ok(Some(words));
    }
    let count = header(r, b'*').await?;
    if count > RESP_ARGS_MAX as u64 {
        return Err(RespError::TooManyArgs { count });
    }
    let mut budget = RESP_REQUEST_BYTES_MAX as u64;
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = header(r, b'$').await?;
        if len > budget {
            return Err(RespError::TooLarge);
        }
        budget -= len;
        // Grown as the bytes arrive, so an announced length costs memory only once it is sent.
        let mut arg = Vec::new();
        (&mut *r).take(len).read_to_end(&mut arg).await?;
        if arg.len() as u64 != len {
            return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf).await?;
        if crlf != *b"\r\n" {
            return Err(RespError::Protocol(
                "expected CRLF after a bulk string".into(),
            ));
        }
        args.push(arg);
    }
    Ok(Some(args))
}

/// Reads a `<tag><number>\r\n` line.
async fn header<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, tag: u8) -> Result<u64, RespError> {
    let line = read_line(r, HEADER_LINE_BYTES_MAX).await?;
    let expected = if tag == b'*' { "'*'" } else { "'$'" };
    match line.split_first() {
        Some((t, digits)) if *t == tag => std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or_else(|| RespError::Protocol(format!("invalid length after {expected}"))),
        _ => Err(RespError::Protocol(format!("expected {expected}"))),
    }
}

/// Reads a line ending in `\n` (an optional `\r` before it is dropped), of at most `max` bytes.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, RespError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(max as u64 + 2)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > max {
            RespError::TooLarge
        } else {
            RespError::Io(std::io::ErrorKind::UnexpectedEof.into())
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

/// One connection's state.
struct Session {
    client: ClientId,
    shared: Arc<Shared>,
    /// 2 or 3, switched by `HELLO`.
    proto: u8,
    name: Option<Vec<u8>>,
}

/// Serves one RESP connection until the client quits or closes it.
pub(crate) async fn serve(io: Box<dyn IoObj>, client: ClientId, shared: Arc<Shared>) {
    let (read, write) = tokio::io::split(io);
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    let mut session = Session {
        client,
        shared,
        proto: 2,
        name: None,
    };
    let mut out = Vec::new();
    loop {
        let args = match read_command(&mut reader).await {
            Ok(Some(args)) => args,
            Ok(None) => return,
            Err(RespError::Io(e)) => {
                return debug!(remote = %session.client.remote, "RESP connection: {e}")
            }
            Err(e) => {
                // Answer why, then close: the rest of the stream cannot be trusted.
                out.clear();
                Reply::err("ERR", &e).encode(session.proto, &mut out);
                let _ = writer.write_all(&out).await;
                let _ = writer.flush().await;
                return;
            }
        };
        if args.is_empty() {
            continue;
        }
        let quit = args[0].eq_ignore_ascii_case(b"QUIT");
        let reply = session.command(&args).await;
        out.clear();
        reply.encode(session.proto, &mut out);
        if writer.write_all(&out).await.is_err() {
            return;
        }
        // Pipelined commands already here are answered before one flush.
        if (quit || reader.buffer().is_empty()) && writer.flush().await.is_err() {
            return;
        }
        if quit {
            return;
        }
    }
}

/// The commands this port answers: name, arity (negative: at least), flags, first key, last key,
/// key step — what `COMMAND` reports.
struct CommandInfo {
    name: &'static str,
    /// Arguments including the name; negative: at least that many.
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
}

const fn cmd(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
) -> CommandInfo {
    CommandInfo {
        name,
        arity,
        flags,
        first_key,
        last_key,
        step,
    }
}

const COMMANDS: &[CommandInfo] = &[
    cmd("get", -2, &["readonly"], 1, 1, 1),
    cmd("set", -3, &["write"], 1, 1, 1),
    cmd("del", -2, &["write"], 1, 1, 1),
    cmd("exists", -2, &["readonly"], 1, -1, 1),
    cmd("mget", -2, &["readonly"], 1, -1, 1),
    cmd("mset", -3, &["write"], 1, -1, 2),
    cmd("ping", -1, &["fast"], 0, 0, 0),
    cmd("echo", 2, &["fast"], 0, 0, 0),
    cmd("hello", -1, &["fast"], 0, 0, 0),
    cmd("auth", -2, &["fast"], 0, 0, 0),
    cmd("client", -2, &["fast"], 0, 0, 0),
    cmd("command", -1, &["loading"], 0, 0, 0),
    cmd("config", -2, &["admin"], 0, 0, 0),
    cmd("info", -1, &["loading"], 0, 0, 0),
    cmd("select", 2, &["fast"], 0, 0, 0),
    cmd("quit", -1, &["fast"], 0, 0, 0),
];

impl Session {
    async fn command(&mut self, args: &[Vec<u8>]) -> Reply {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let rest = &args[1..];
        let arity_ok = COMMANDS.iter().find(|c| c.name == name).map(|c| {
            let n = args.len() as i64;
            if c.arity >= 0 {
                n == c.arity
            } else {
                n >= -c.arity
            }
        });
        match arity_ok {
            None => return unknown(&args[0], rest),
            Some(false) => {
                return Reply::err(
                    "ERR",
                    format!("wrong number of arguments for '{name}' command"),
                )
            }
            Some(true) => {}
        }
        match name.as_str() {
            "ping" => match rest.first() {
                None => Reply::Simple("PONG".into()),
                Some(msg) if rest.len() == 1 => Reply::bulk(msg.clone()),
                Some(_) => Reply::err("ERR", "wrong number of arguments for 'ping' command"),
            },
            "echo" => Reply::bulk(rest[0].clone()),
            "hello" => self.hello(rest),
            "auth" => auth_refused(),
            "client" => self.client_cmd(rest),
            "command" => command_cmd(rest),
            // Load tools read settings such as `save` at start; Cairn has no Redis settings, and
            // says so with an empty answer rather than an error.
            "config" if rest[0].eq_ignore_ascii_case(b"GET") => Reply::Map(Vec::new()),
            "config" => Reply::err("ERR", "Cairn answers only CONFIG GET, and has no Redis settings; its configuration is node.toml"),
            "info" => self.info(),
            "select" if rest[0] == b"0" => Reply::ok(),
            "select" => Reply::err("ERR", "Cairn has one keyspace: only SELECT 0 is valid"),
            "quit" => Reply::ok(),
            "get" => self.get(rest).await,
            "set" => self.set(rest).await,
            "del" => self.del(rest).await,
            "exists" => self.exists(rest).await,
            "mget" => self.mget(rest).await,
            "mset" => self.mset(rest).await,
            _ => unknown(&args[0], rest),
        }
    }

    fn hello(&mut self, rest: &[Vec<u8>]) -> Reply {
        let mut proto = self.proto;
        let mut i = 0;
        if let Some(v) = rest.first() {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u8>().ok())
            {
                Some(v @ (2 | 3)) => proto = v,
                _ => {
                    return Reply::err(
                        "NOPROTO",
                        "unsupported protocol version; Cairn speaks 2 and 3",
                    )
                }
            }
            i = 1;
        }
        while i < rest.len() {
            if rest[i].eq_ignore_ascii_case(b"AUTH") {
                return auth_refused();
            } else if rest[i].eq_ignore_ascii_case(b"SETNAME") && i + 1 < rest.len() {
                self.name = Some(rest[i + 1].clone());
                i += 2;
            } else {
                return Reply::err(
                    "ERR",
                    format!(
                        "syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(&rest[i])
                    ),
                );
            }
        }
        self.proto = proto;
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("cairn")),
            (
                Reply::bulk("version"),
                Reply::bulk(env!("CARGO_PKG_VERSION")),
            ),
            (Reply::bulk("proto"), Reply::Int(proto.into())),
            (Reply::bulk("id"), Reply::Int(0)),
            (Reply::bulk("mode"), Reply::bulk("cluster")),
            (Reply::bulk("role"), Reply::bulk("master")),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client_cmd(&mut self, rest: &[Vec<u8>]) -> Reply {
        let sub = String::from_utf8_lossy(&rest[0]).to_ascii_lowercase();
        match (sub.as_str(), rest.len()) {
            ("setname", 2) => {
                self.name = Some(rest[1].clone());
                Reply::ok()
            }
            ("getname", 1) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            // Library name and version: accepted, nothing to keep them for.
            ("setinfo", 3) => Reply::ok(),
            ("id", 1) => Reply::Int(0),
            _ => Reply::err(
                "ERR",
                format!("unknown subcommand '{sub}'; Cairn answers CLIENT SETNAME, GETNAME, SETINFO and ID"),
            ),
        }
    }

    fn info(&self) -> Reply {
        let status = self.shared.status();
        let hints: u64 = status.members.iter().filter_map(|m| m.hints_pending).sum();
        let up = status.members.iter().filter(|m| m.status == "up").count();
        let ae = &status.anti_entropy;
        let engine = self.shared.engine().stats();
        let writes = engine.writes.load(std::sync::atomic::Ordering::Relaxed);
        let commits = engine.commits.load(std::sync::atomic::Ordering::Relaxed);
        let text = format!(
            "# Server\r\ncairn_version:{}\r\nnode:{}\r\nprocess_id:{}\r\nresp_protocol:{}\r\n\
             \r\n# Cluster\r\nmembers:{}\r\nmembers_up:{up}\r\nreplicas:{}\r\npartitions:{}\r\n\
             hints_pending:{hints}\r\n\r\n# Keyspace\r\nkeys:{}\r\n\r\n# Storage\r\n\
             writes:{writes}\r\ncommits:{commits}\r\n\r\n# AntiEntropy\r\nenabled:{}\r\n\
             trees_ready:{}\r\nexchanges:{}\r\nexchanges_failed:{}\r\nkeys_repaired:{}\r\n\
             bytes_sent:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            status.node,
            std::process::id(),
            self.proto,
            status.members.len(),
            status.replicas,
            status.partitions,
            ae.keys,
            u8::from(ae.enabled),
            u8::from(ae.trees_ready),
            ae.exchanges,
            ae.exchanges_failed,
            ae.keys_repaired,
            ae.bytes_sent,
        );
        Reply::Bulk(text.into_bytes())
    }

    /// Runs one client request through authorization and the node's routing, recording it.
    async fn request(&self, req: Request) -> Response {
        let started = Instant::now();
        let op = crate::metrics::op(&req);
        let resp = match authorize(&self.client, &req) {
            Ok(()) => self.shared.frontend_request(req).await,
            Err(e) => Response::Error(e),
        };
        crate::metrics::record_request("resp", op, &resp, started);
        resp
    }

    async fn read(&self, key: &[u8], opts: ReadOptions) -> Result<GetReply, Reply> {
        match self
            .request(Request::Get {
                key: key.to_vec(),
                opts,
            })
            .await
        {
            Response::Value(v) => Ok(v),
            other => Err(error_reply(other)),
        }
    }

    /// `GET key [R n] [PR n] [TIMEOUT ms] [ONE]`: every sibling's value then the context; with
    /// `ONE`, the single value (nil if none) or an error naming the siblings count.
    async fn get(&self, rest: &[Vec<u8>]) -> Reply {
        let mut opts = ReadOptions::default();
        let mut one = false;
        let mut i = 1;
        while i < rest.len() {
            let word = rest[i].to_ascii_uppercase();
            if word == b"ONE" {
                one = true;
                i += 1;
                continue;
            }
            let Some(value) = rest.get(i + 1) else {
                return syntax(&rest[i]);
            };
            let parsed = match word.as_slice() {
                b"R" => number(value).map(|n| opts.r = Some(n)),
                b"PR" => number(value).map(|n| opts.pr = Some(n)),
                b"TIMEOUT" => timeout(value).map(|n| opts.timeout_ms = Some(n)),
                _ => return syntax(&rest[i]),
            };
            if let Err(e) = parsed {
                return e;
            }
            i += 2;
        }
        let reply = match self.read(&rest[0], opts).await {
            Ok(reply) => reply,
            Err(e) => return e,
        };
        if one {
            return match reply.siblings.len() {
                0 => Reply::Null,
                1 => Reply::Bulk(reply.siblings[0].value.clone()),
                n => Reply::err(
                    "SIBLINGS",
                    format!("the key holds {n} siblings; GET without ONE answers them all with the context to resolve them"),
                ),
            };
        }
        siblings_reply(&reply)
    }

    /// `SET key value [CONTEXT ctx] [W n] [PW n] [TIMEOUT ms]`.
    async fn set(&self, rest: &[Vec<u8>]) -> Reply {
        let (context, opts) = match write_options(&rest[2..]) {
            Ok(parsed) => parsed,
            Err(e) => return e,
        };
        let req = Request::Put {
            key: rest[0].clone(),
            value: rest[1].clone(),
            context,
            opts,
        };
        match self.request(req).await {
            Response::Written(_) => Reply::ok(),
            other => error_reply(other),
        }
    }

    /// `DEL key [CONTEXT ctx] [W n] [PW n] [TIMEOUT ms]`: deletes what the context saw, or —
    /// without one — what a read finds now. Answers 1 when live values were deleted, else 0.
    async fn del(&self, rest: &[Vec<u8>]) -> Reply {
        let (context, opts) = match write_options(&rest[1..]) {
            Ok(parsed) => parsed,
            Err(e) => return e,
        };
        let key = &rest[0];
        let (context, existed) = if context.is_empty() {
            match self.read(key, ReadOptions::default()).await {
                Ok(r) if r.siblings.is_empty() => return Reply::Int(0),
                Ok(r) => (r.context, true),
                Err(e) => return e,
            }
        } else {
            (context, true)
        };
        let req = Request::Delete {
            key: key.clone(),
            context,
            opts,
        };
        match self.request(req).await {
            Response::Written(_) => Reply::Int(i64::from(existed)),
            other => error_reply(other),
        }
    }

    /// `EXISTS key [key …]`: how many of the keys hold a value, each read on its own.
    async fn exists(&self, keys: &[Vec<u8>]) -> Reply {
        let mut n = 0;
        for key in keys {
            match self.read(key, ReadOptions::default()).await {
                Ok(r) if !r.siblings.is_empty() => n += 1,
                Ok(_) => {}
                Err(e) => return e,
            }
        }
        Reply::Int(n)
    }

    /// `MGET key [key …]`: for each key what `GET` answers (values then context), or the error
    /// its read got.
    async fn mget(&self, keys: &[Vec<u8>]) -> Reply {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(match self.read(key, ReadOptions::default()).await {
                Ok(r) => siblings_reply(&r),
                Err(e) => e,
            });
        }
        Reply::Array(out)
    }

    /// `MSET key value [key value …]`: blind writes, each its own quorum operation, in order;
    /// the first failure is answered (writes before it stay).
    async fn mset(&self, rest: &[Vec<u8>]) -> Reply {
        if rest.len() % 2 != 0 {
            return Reply::err("ERR", "wrong number of arguments for 'mset' command");
        }
        for pair in rest.chunks(2) {
            let req = Request::Put {
                key: pair[0].clone(),
                value: pair[1].clone(),
                context: Context::empty(),
                opts: WriteOptions::default(),
            };
            match self.request(req).await {
                Response::Written(_) => {}
                other => return error_reply(other),
            }
        }
        Reply::ok()
    }
}

fn siblings_reply(reply: &GetReply) -> Reply {
    let mut items: Vec<Reply> = reply
        .siblings
        .iter()
        .map(|s| Reply::Bulk(s.value.clone()))
        .collect();
    items.push(Reply::Bulk(reply.context.to_token().into_bytes()));
    Reply::Array(items)
}

/// Parses `[CONTEXT ctx] [W n] [PW n] [TIMEOUT ms]`.
fn write_options(args: &[Vec<u8>]) -> Result<(Context, WriteOptions), Reply> {
    let mut context = Context::empty();
    let mut opts = WriteOptions::default();
    let mut i = 0;
    while i < args.len() {
        let Some(value) = args.get(i + 1) else {
            return Err(syntax(&args[i]));
        };
        match args[i].to_ascii_uppercase().as_slice() {
            b"CONTEXT" => {
                context = Context::from_token(&String::from_utf8_lossy(value))
                    .map_err(|e| Reply::err("ERR", e))?;
            }
            b"W" => opts.w = Some(number(value)?),
            b"PW" => opts.pw = Some(number(value)?),
            b"TIMEOUT" => opts.timeout_ms = Some(timeout(value)?),
            _ => return Err(syntax(&args[i])),
        }
        i += 2;
    }
    Ok((context, opts))
}

fn number<T: std::str::FromStr>(value: &[u8]) -> Result<T, Reply> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Reply::err(
                "ERR",
                format!(
                    "value '{}' is not an integer or out of range",
                    String::from_utf8_lossy(value)
                ),
            )
        })
}

/// A timeout in milliseconds, at least 1: a request given no time at all could only fail.
fn timeout(value: &[u8]) -> Result<u32, Reply> {
    match number(value)? {
        0 => Err(Reply::err("ERR", "TIMEOUT must be at least 1 ms")),
        ms => Ok(ms),
    }
}

fn syntax(word: &[u8]) -> Reply {
    Reply::err(
        "ERR",
        format!(
            "syntax error at '{}': options are CONTEXT, R, PR, W, PW, TIMEOUT (and ONE for GET)",
            String::from_utf8_lossy(word)
        ),
    )
}

fn auth_refused() -> Reply {
    Reply::err(
        "ERR",
        "AUTH is not supported: Cairn authenticates clients by their TLS certificate from the cluster CA",
    )
}

fn unknown(name: &[u8], rest: &[Vec<u8>]) -> Reply {
    let args: String = rest
        .iter()
        .take(8)
        .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
        .collect();
    Reply::err(
        "ERR",
        format!(
            "unknown command '{}', with args beginning with: {args}",
            String::from_utf8_lossy(name)
        ),
    )
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS`: the commands this port
/// answers, with no documentation to offer.
fn command_cmd(rest: &[Vec<u8>]) -> Reply {
    let info = |c: &CommandInfo| {
        Reply::Array(vec![
            Reply::bulk(c.name),
            Reply::Int(c.arity),
            Reply::Array(c.flags.iter().map(|f| Reply::Simple((*f).into())).collect()),
            Reply::Int(c.first_key),
            Reply::Int(c.last_key),
            Reply::Int(c.step),
        ])
    };
    let Some(sub) = rest.first() else {
        return Reply::Array(COMMANDS.iter().map(info).collect());
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"count" => Reply::Int(COMMANDS.len() as i64),
        b"info" => Reply::Array(
            rest[1..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|c| c.name == name)
                        .map_or(Reply::Null, info)
                })
                .collect(),
        ),
        b"docs" => Reply::Map(Vec::new()),
        _ => Reply::err(
            "ERR",
            format!(
                "unknown subcommand '{}'; Cairn answers COMMAND, COMMAND COUNT, INFO and DOCS",
                String::from_utf8_lossy(sub)
            ),
        ),
    }
}

/// A failed request as a RESP error: the code says what kind (`QUORUM`, `LIMIT`, …), the text is
/// what the CLI prints.
fn error_reply(resp: Response) -> Reply {
    match resp {
        Response::Error(e) => {
            let code = match &e {
                ErrorReply::QuorumNotReached { .. } => "QUORUM",
                ErrorReply::Limit(_) => "LIMIT",
                ErrorReply::Overloaded { .. } | ErrorReply::ShuttingDown => "BUSY",
                ErrorReply::NoRing { .. } | ErrorReply::Unreachable { .. } => "CLUSTERDOWN",
                _ => "ERR",
            };
            Reply::err(code, e)
        }
        other => Reply::err("ERR", format!("unexpected answer from the node: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<Vec<Vec<u8>>>, RespError> {
        let mut r = BufReader::new(bytes);
        read_command(&mut r).await
    }

    #[tokio::test]
    async fn commands_parse_in_both_forms() {
        let got = parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").await.unwrap();
        assert_eq!(got, Some(vec![b"GET".to_vec(), b"k".to_vec()]));
        let got = parse(b"PING  hello\r\n").await.unwrap();
        assert_eq!(got, Some(vec![b"PING".to_vec(), b"hello".to_vec()]));
        assert_eq!(parse(b"").await.unwrap(), None);
    }

    #[tokio::test]
    async fn lengths_are_checked_before_the_bytes_are_read() {
        let huge = format!("*1\r\n${}\r\n", RESP_REQUEST_BYTES_MAX + 1);
        assert!(matches!(
            parse(huge.as_bytes()).await,
            Err(RespError::TooLarge)
        ));
        let many = format!("*{}\r\n", RESP_ARGS_MAX + 1);
        assert!(matches!(
            parse(many.as_bytes()).await,
            Err(RespError::TooManyArgs { .. })
        ));
        assert!(matches!(
            parse(b"*x\r\n").await,
            Err(RespError::Protocol(_))
        ));
        assert!(matches!(
            parse(b"*1\r\n$1\r\nkXY").await,
            Err(RespError::Protocol(_))
        ));
        assert!(matches!(
            parse(b"*1\r\n$5\r\nab").await,
            Err(RespError::Io(_))
        ));
    }

    #[test]
    fn replies_encode_per_protocol_version() {
        let check = |reply: Reply, proto: u8, wire: &[u8]| {
            let mut out = Vec::new();
            reply.encode(proto, &mut out);
            assert_eq!(out, wire, "{reply:?} in RESP{proto}");
        };
        check(Reply::Null, 2, b"$-1\r\n");
        check(Reply::Null, 3, b"_\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        check(map.clone(), 2, b"*2\r\n$1\r\na\r\n:1\r\n");
        check(map, 3, b"%1\r\n$1\r\na\r\n:1\r\n");
        check(Reply::Error("ERR a\r\nb".into()), 2, b"-ERR a  b\r\n");
    }
}
