//! The client commands: `put`, `get`, `delete` and `ping`.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Read as _};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use cairn_proto::limits::VALUE_BYTES_MAX;
use cairn_proto::{
    check_request, Context, ErrorReply, GetReply, LimitError, ReadOptions, Request, WriteOptions,
};
use clap::Args;

use crate::render::{self, WriteKind};
use crate::target::{self, ClientArgs};
use crate::Outcome;

/// `cairn put`
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value. Without it (and without --file) the value is read from stdin.
    #[arg(conflicts_with = "file")]
    pub value: Option<OsString>,
    /// The context printed by a previous get (or put): the write replaces exactly the siblings
    /// it covers. Without it the write is blind and becomes a sibling of what the key holds.
    #[arg(long, value_name = "CTX")]
    pub context: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub quorum: WriteFlags,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Quorum flags of `put` and `delete`.
#[derive(Debug, Clone, Args)]
pub struct WriteFlags {
    /// Replicas that must durably store the write before it is acknowledged, the coordinator
    /// included; at most N [default: a majority of N].
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u8).range(1..))]
    pub w: Option<u8>,
    /// Of those, how many must be primary replicas rather than fallbacks standing in for an
    /// unreachable one [default: 0].
    #[arg(long, value_name = "PW")]
    pub pw: Option<u8>,
}

impl WriteFlags {
    /// The options sent with the write.
    pub fn options(&self, client: &ClientArgs) -> WriteOptions {
        WriteOptions {
            w: self.w,
            pw: self.pw,
            timeout_ms: client.timeout_ms(),
        }
    }
}

/// Quorum flags of `get`.
#[derive(Debug, Clone, Args)]
pub struct ReadFlags {
    /// Replicas that must answer before the read does; at most N [default: a majority of N].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u8).range(1..))]
    pub r: Option<u8>,
    /// Of those, how many must be primary replicas rather than fallbacks [default: 0].
    #[arg(long, value_name = "PR")]
    pub pr: Option<u8>,
    /// Whether a replica that does not hold the key counts toward R [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub notfound_ok: Option<bool>,
    /// With --notfound-ok false: answer "not found" as soon as a majority of replicas says so,
    /// instead of waiting for the rest [default: false].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub basic_quorum: Option<bool>,
}

impl ReadFlags {
    /// The options sent with the read.
    pub fn options(&self, client: &ClientArgs) -> ReadOptions {
        ReadOptions {
            r: self.r,
            pr: self.pr,
            notfound_ok: self.notfound_ok,
            basic_quorum: self.basic_quorum,
            timeout_ms: client.timeout_ms(),
            local: None,
        }
    }
}

/// `cairn get`
#[derive(Debug, Args)]
#[command(after_help = "\
Output: each sibling on its own line (numbered when there are several), then `context: TOKEN`.
A value that is not UTF-8 text, or holds control characters other than tabs, is shown as
`base64:` followed by its base64. With --json, a value that is not valid UTF-8 is
{\"base64\":\"...\"} instead of a string.
Exit status 1 (and `not found: KEY` on stderr) when the key holds no value.")]
pub struct GetArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub quorum: ReadFlags,
    /// Print the asked node's own stored copy (choose the node with --node): no quorum, no
    /// forward, no read repair, to compare replicas. Needs an admin certificate (the cluster
    /// directory's admin identity is used unless --cert is given).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn delete`
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    /// The context printed by a previous get: deletes exactly the siblings it covers. Without it,
    /// the key is read first and what that read returned is deleted (values written concurrently
    /// survive either way).
    #[arg(long, value_name = "CTX")]
    pub context: Option<String>,
    #[command(flatten)]
    pub quorum: WriteFlags,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `cairn ping`
#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where a put's value comes from.
#[derive(Debug, PartialEq, Eq)]
enum ValueSource<'a> {
    Arg(&'a OsString),
    File(&'a Path),
    Stdin,
}

fn value_source(args: &PutArgs) -> ValueSource<'_> {
    match (&args.value, &args.file) {
        (Some(v), _) => ValueSource::Arg(v),
        (None, Some(f)) => ValueSource::File(f),
        (None, None) => ValueSource::Stdin,
    }
}

/// Reads at most `VALUE_BYTES_MAX + 1` bytes: enough to tell that a value is too large without
/// holding an unbounded input in memory.
fn read_bounded(mut input: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut value = Vec::new();
    input
        .by_ref()
        .take(VALUE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut value)?;
    Ok(value)
}

fn read_value(source: ValueSource<'_>) -> anyhow::Result<Vec<u8>> {
    match source {
        ValueSource::Arg(v) => Ok(v.clone().into_vec()),
        ValueSource::File(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // The size is known up front for a regular file: the error can name it exactly.
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len > VALUE_BYTES_MAX as u64 {
                return Err(LimitError::ValueTooLarge {
                    len,
                    max: VALUE_BYTES_MAX as u64,
                }
                .into());
            }
            let value =
                read_bounded(file).with_context(|| format!("cannot read {}", path.display()))?;
            check_length(value, path.display())
        }
        ValueSource::Stdin => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("reading the value from stdin; end it with Ctrl-D");
            }
            let value = read_bounded(stdin.lock()).context("cannot read the value from stdin")?;
            check_length(value, "stdin")
        }
    }
}

fn check_length(value: Vec<u8>, from: impl std::fmt::Display) -> anyhow::Result<Vec<u8>> {
    if value.len() > VALUE_BYTES_MAX {
        bail!("value from {from} is over VALUE_BYTES_MAX ({VALUE_BYTES_MAX} bytes)");
    }
    Ok(value)
}

fn parse_context(token: Option<&str>) -> anyhow::Result<Option<Context>> {
    token
        .map(Context::from_token)
        .transpose()
        .map_err(anyhow::Error::from)
}

/// A failed write's error; one that missed its quorum says that the replicas that did
/// acknowledge keep it (a retry is not a no-op: without the context it adds a sibling).
fn write_failed(session: &target::Session, e: cairn_client::ClientError) -> anyhow::Error {
    let kept = matches!(
        &e,
        cairn_client::ClientError::Node(ErrorReply::QuorumNotReached { got, .. }) if *got > 0
    );
    let e = session.fail(e);
    match kept {
        true => anyhow!("{e} (the replicas that acknowledged keep the write)"),
        false => e,
    }
}

/// Prints a write's reply.
fn print_written(kind: WriteKind, key: &str, reply: &GetReply, json: bool) {
    if json {
        println!("{}", render::written_json(key, reply));
    } else {
        print!("{}", render::written_text(kind, key, reply));
    }
}

/// `cairn put`
pub async fn put(args: PutArgs) -> anyhow::Result<Outcome> {
    let context = parse_context(args.context.as_deref())?.unwrap_or_default();
    let value = read_value(value_source(&args))?;
    let key = args.key.as_bytes();
    let opts = args.quorum.options(&args.client);
    // Refused here, before connecting, so a person gets the error with no cluster running.
    check_request(&Request::Put {
        key: key.to_vec(),
        value: value.clone(),
        context: context.clone(),
        opts: opts.clone(),
    })?;
    let session = target::connect(&args.client).await?;
    let reply = session
        .client
        .put(key, &value, &context, &opts)
        .await
        .map_err(|e| write_failed(&session, e))?;
    session.close().await;
    print_written(WriteKind::Put, &args.key, &reply, args.client.json);
    Ok(Outcome::Done)
}

/// `cairn get`
pub async fn get(args: GetArgs) -> anyhow::Result<Outcome> {
    let key = args.key.as_bytes();
    let mut opts = args.quorum.options(&args.client);
    let client = if args.local {
        opts.local = Some(true);
        args.client.as_admin()
    } else {
        args.client.clone()
    };
    check_request(&Request::Get {
        key: key.to_vec(),
        opts: opts.clone(),
    })?;
    let session = target::connect(&client).await?;
    let reply = session
        .client
        .get(key, &opts)
        .await
        .map_err(|e| session.fail(e))?;
    session.close().await;
    if args.client.json {
        println!("{}", render::get_json(&args.key, &reply));
    } else {
        print!("{}", render::get_text(&reply));
    }
    if reply.siblings.is_empty() {
        eprintln!("not found: {}", args.key);
        return Ok(Outcome::NotFound);
    }
    Ok(Outcome::Done)
}

/// `cairn delete`
pub async fn delete(args: DeleteArgs) -> anyhow::Result<Outcome> {
    let context = parse_context(args.context.as_deref())?;
    let key = args.key.as_bytes();
    let opts = args.quorum.options(&args.client);
    check_request(&Request::Delete {
        key: key.to_vec(),
        context: context.clone().unwrap_or_default(),
        opts: opts.clone(),
    })?;
    let session = target::connect(&args.client).await?;
    let context = match context {
        Some(context) => context,
        None => {
            let read = ReadOptions {
                timeout_ms: args.client.timeout_ms(),
                ..ReadOptions::default()
            };
            session
                .client
                .get(key, &read)
                .await
                .map_err(|e| session.fail(e))?
                .context
        }
    };
    let reply = session
        .client
        .delete(key, &context, &opts)
        .await
        .map_err(|e| write_failed(&session, e))?;
    session.close().await;
    print_written(WriteKind::Delete, &args.key, &reply, args.client.json);
    Ok(Outcome::Done)
}

/// One node's answer to a ping.
#[derive(Debug, serde::Serialize)]
struct PingLine {
    node: String,
    addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rtt_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `cairn ping`: every node of the cluster directory, or the one given by --node.
pub async fn ping(args: PingArgs) -> anyhow::Result<Outcome> {
    let args = args.client;
    let identity = args.identity()?;
    let targets = args.targets()?;
    let mut lines = Vec::new();
    for target in &targets {
        let result = async {
            let client = target.connect(&identity, args.timeout()).await?;
            let started = Instant::now();
            let name = client.ping().await;
            let rtt = started.elapsed();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.close()).await;
            name.map(|name| (name, rtt))
        }
        .await;
        lines.push(match result {
            Ok((name, rtt)) => PingLine {
                node: name,
                addr: target.addr.to_string(),
                rtt_ms: Some((rtt.as_secs_f64() * 1e6).round() / 1e3),
                error: None,
            },
            Err(e) => PingLine {
                node: target.name.clone().unwrap_or_default(),
                addr: target.addr.to_string(),
                rtt_ms: None,
                error: Some(target.explain(&e)),
            },
        });
    }
    let failed = lines.iter().filter(|l| l.error.is_some()).count();
    if let ([line], 1) = (lines.as_slice(), failed) {
        // One node asked for and it did not answer: the error is the whole story.
        return Err(anyhow!(line.error.clone().unwrap_or_default()));
    }
    if args.json {
        println!("{}", serde_json::to_string(&lines)?);
    } else {
        for line in &lines {
            match (&line.rtt_ms, &line.error) {
                (Some(ms), _) => println!("{} {} ok, round trip {ms:.2} ms", line.node, line.addr),
                (None, error) => println!(
                    "{} {} no answer: {}",
                    line.node,
                    line.addr,
                    error.as_deref().unwrap_or("")
                ),
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} nodes did not answer", lines.len());
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_within_the_limit() {
        assert_eq!(read_bounded(&b"abc"[..]).unwrap(), b"abc");
        let big = vec![7u8; VALUE_BYTES_MAX + 10];
        let read = read_bounded(&big[..]).unwrap();
        assert_eq!(read.len(), VALUE_BYTES_MAX + 1);
        let err = check_length(read, "stdin").unwrap_err().to_string();
        assert!(err.contains("VALUE_BYTES_MAX"), "{err}");
    }

    #[test]
    fn a_large_file_is_refused_with_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![0u8; VALUE_BYTES_MAX + 1]).unwrap();
        let err = read_value(ValueSource::File(&path))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "value of {} bytes exceeds VALUE_BYTES_MAX ({VALUE_BYTES_MAX} bytes)",
                VALUE_BYTES_MAX + 1
            )
        );
    }

    #[test]
    fn bad_context_tokens_are_errors() {
        assert!(parse_context(Some("not a token!")).is_err());
        assert_eq!(parse_context(None).unwrap(), None);
        assert_eq!(
            parse_context(Some("AQI")).unwrap(),
            Some(Context(vec![1, 2]))
        );
    }
}
