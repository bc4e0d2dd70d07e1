//! How replies are shown: lines of text for people, one JSON object for scripts, and the marker
//! for values that are not text.
//!
//! Text: a value is printed as itself when it is UTF-8 without control characters (tabs allowed),
//! otherwise as `base64:` followed by its standard base64 — so every sibling is exactly one line.
//! JSON: a value is a string when it is valid UTF-8, otherwise `{"base64":"..."}`.

use base64::Engine as _;
use cairn_proto::GetReply;
use serde::ser::SerializeMap as _;
use serde::{Serialize, Serializer};

/// Prefix of a value shown as base64 in text output.
pub const BASE64_PREFIX: &str = "base64:";

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A value as one line of text (see the module doc).
pub fn value_line(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text)
            if !text.starts_with(BASE64_PREFIX)
                && !text.chars().any(|c| c.is_control() && c != '\t') =>
        {
            text.to_owned()
        }
        _ => format!("{BASE64_PREFIX}{}", base64(value)),
    }
}

/// What `get` prints on stdout: the siblings, then the context. A key with no value prints only
/// its context, and that only when it is not empty (a deleted key's context covers the tombstone,
/// so a write with it supersedes the delete).
pub fn get_text(reply: &GetReply) -> String {
    let mut out = String::new();
    match reply.siblings.as_slice() {
        [] => {}
        [one] => {
            out.push_str(&value_line(&one.value));
            out.push('\n');
        }
        many => {
            out.push_str(&format!("({} siblings)\n", many.len()));
            for (i, sibling) in many.iter().enumerate() {
                out.push_str(&format!("{}: {}\n", i + 1, value_line(&sibling.value)));
            }
        }
    }
    if !(reply.siblings.is_empty() && reply.context.is_empty()) {
        out.push_str(&format!("context: {}\n", reply.context.to_token()));
    }
    out
}

/// Which write a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `put`
    Put,
    /// `delete`
    Delete,
}

/// What `put` and `delete` print: `ok` (with a note when the key holds values the writer did not
/// write: concurrent siblings, or values that survived a delete) and the new context.
pub fn written_text(kind: WriteKind, key: &str, reply: &GetReply) -> String {
    let n = reply.siblings.len();
    let note = match kind {
        WriteKind::Put if n > 1 => {
            format!(" ({key} now holds {n} siblings; `cairn get {key}` shows them)")
        }
        WriteKind::Delete if n == 1 => {
            format!(" (1 concurrent value survived the delete; `cairn get {key}` shows it)")
        }
        WriteKind::Delete if n > 1 => {
            format!(" ({n} concurrent values survived the delete; `cairn get {key}` shows them)")
        }
        _ => String::new(),
    };
    format!("ok{note}\ncontext: {}\n", reply.context.to_token())
}

/// Bytes as JSON: a string if valid UTF-8, else `{"base64":"..."}`.
struct JsonBytes<'a>(&'a [u8]);

impl Serialize for JsonBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("base64", &base64(self.0))?;
                map.end()
            }
        }
    }
}

#[derive(Serialize)]
struct GetJson<'a> {
    key: JsonBytes<'a>,
    siblings: Vec<SiblingJson<'a>>,
    context: String,
}

#[derive(Serialize)]
struct SiblingJson<'a> {
    value: JsonBytes<'a>,
    dot: String,
}

#[derive(Serialize)]
struct WrittenJson<'a> {
    key: JsonBytes<'a>,
    context: String,
}

/// `get --json`: `{"key":..,"siblings":[{"value":..,"dot":".."}],"context":".."}` on one line.
pub fn get_json(key: &str, reply: &GetReply) -> String {
    let json = GetJson {
        key: JsonBytes(key.as_bytes()),
        siblings: reply
            .siblings
            .iter()
            .map(|s| SiblingJson {
                value: JsonBytes(&s.value),
                dot: s.dot.to_string(),
            })
            .collect(),
        context: reply.context.to_token(),
    };
    serde_json::to_string(&json).expect("plain structs always serialize")
}

/// `put --json` and `delete --json`: `{"key":..,"context":".."}` on one line.
pub fn written_json(key: &str, reply: &GetReply) -> String {
    let json = WrittenJson {
        key: JsonBytes(key.as_bytes()),
        context: reply.context.to_token(),
    };
    serde_json::to_string(&json).expect("plain structs always serialize")
}

#[cfg(test)]
mod tests {
    use cairn_proto::{ActorId, Context, DotId, NodeId, Sibling};

    use super::*;

    fn sibling(value: &[u8], counter: u64) -> Sibling {
        Sibling {
            value: value.to_vec(),
            dot: DotId {
                actor: ActorId {
                    node: NodeId(0xab),
                    epoch: 0xcd,
                },
                counter,
            },
        }
    }

    fn reply(values: &[&[u8]], context: &[u8]) -> GetReply {
        GetReply {
            siblings: values
                .iter()
                .enumerate()
                .map(|(i, v)| sibling(v, i as u64 + 1))
                .collect(),
            context: Context(context.to_vec()),
        }
    }

    #[test]
    fn values_render_as_one_line() {
        let check = |value: &[u8], expected: &str| assert_eq!(value_line(value), expected);
        check(b"hello", "hello");
        check(b"tab\tok", "tab\tok");
        check("ünïcode".as_bytes(), "ünïcode");
        check(b"", "");
        check(b"two\nlines", "base64:dHdvCmxpbmVz");
        check(b"\xff\x00", "base64:/wA=");
        // A text value that looks like the marker is marked itself, so the output is unambiguous.
        check(b"base64:abc", "base64:YmFzZTY0OmFiYw==");
    }

    #[test]
    fn get_text_numbers_siblings() {
        let check = |r: GetReply, expected: &str| assert_eq!(get_text(&r), expected);
        check(reply(&[b"v"], &[1, 2]), "v\ncontext: AQI\n");
        check(
            reply(&[b"a", b"\xff"], &[1]),
            "(2 siblings)\n1: a\n2: base64:/w==\ncontext: AQ\n",
        );
        check(reply(&[], &[]), "");
        check(reply(&[], &[7]), "context: Bw\n");
    }

    #[test]
    fn written_text_notes_values_the_writer_did_not_write() {
        let check =
            |kind, r: GetReply, expected: &str| assert_eq!(written_text(kind, "k", &r), expected);
        check(WriteKind::Put, reply(&[b"v"], &[1]), "ok\ncontext: AQ\n");
        check(
            WriteKind::Put,
            reply(&[b"v", b"w"], &[1]),
            "ok (k now holds 2 siblings; `cairn get k` shows them)\ncontext: AQ\n",
        );
        check(WriteKind::Delete, reply(&[], &[1]), "ok\ncontext: AQ\n");
        check(
            WriteKind::Delete,
            reply(&[b"w"], &[1]),
            "ok (1 concurrent value survived the delete; `cairn get k` shows it)\ncontext: AQ\n",
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let dot = sibling(b"", 1).dot.to_string();
        assert_eq!(
            get_json("k", &reply(&[b"v"], &[1])),
            format!(r#"{{"key":"k","siblings":[{{"value":"v","dot":"{dot}"}}],"context":"AQ"}}"#)
        );
        let json: serde_json::Value =
            serde_json::from_str(&get_json("k", &reply(&[b"a\nb", b"\xff"], &[]))).unwrap();
        assert_eq!(json["siblings"][0]["value"], "a\nb");
        assert_eq!(json["siblings"][1]["value"]["base64"], "/w==");
        assert_eq!(json["siblings"][1]["dot"], sibling(b"", 2).dot.to_string());
        assert_eq!(
            get_json("k", &reply(&[], &[])),
            r#"{"key":"k","siblings":[],"context":""}"#
        );
        assert_eq!(
            written_json("k", &reply(&[b"v"], &[1])),
            r#"{"key":"k","context":"AQ"}"#
        );
    }
}
