//! How the aggregated endpoint names things so that several upstreams never
//! collide, and how it reads those names back. Pure functions.
//!
//! - Tools and prompts: `<upstream>__<name>`. Names longer than 64 characters
//!   (the MCP tool-name limit) are cut and end in `_<8 hex>`, the start of the
//!   SHA-256 of the full name, so they stay unique and stable; such names are
//!   resolved by listing the upstream.
//! - Resources and templates: `stoa://<upstream>/<original URI>`.
//! - Server-to-client request ids: `"stoa:<upstream>:<original id as JSON>"`.
//! - SSE event ids on merged streams: `<upstream>:<original id>`.

use ring::digest;
use serde_json::Value;

pub const MAX_NAME: usize = 64;
const SEP: &str = "__";
const HASH_HEX: usize = 8;
const URI_PREFIX: &str = "stoa://";
const ID_PREFIX: &str = "stoa:";

pub fn virtual_name(upstream: &str, name: &str) -> String {
    let full = format!("{upstream}{SEP}{name}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = hex(&digest::digest(&digest::SHA256, full.as_bytes()).as_ref()[..HASH_HEX / 2]);
    let mut cut = MAX_NAME - 1 - HASH_HEX;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{hash}", &full[..cut])
}

/// Splits a virtual name into the upstream and the rest. `exact` is false
/// when the rest may be a shortened name that must be looked up.
pub fn split_name(v: &str) -> Option<(&str, &str, bool)> {
    // The first `__`, found by bytes: a `str` pattern search builds a
    // two-way searcher (400 instructions) for a two-byte needle.
    let at = v
        .as_bytes()
        .windows(SEP.len())
        .position(|w| w == SEP.as_bytes())?;
    let (up, rest) = (&v[..at], &v[at + SEP.len()..]);
    if up.is_empty() || rest.is_empty() {
        return None;
    }
    let shortened = v.len() >= MAX_NAME - 8
        && v.len() > HASH_HEX + 1
        && v.as_bytes()[v.len() - HASH_HEX - 1] == b'_'
        && v[v.len() - HASH_HEX..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    Some((up, rest, !shortened))
}

pub fn virtual_uri(upstream: &str, uri: &str) -> String {
    format!("{URI_PREFIX}{upstream}/{uri}")
}

pub fn split_uri(v: &str) -> Option<(&str, &str)> {
    let rest = v.strip_prefix(URI_PREFIX)?;
    let (up, uri) = rest.split_once('/')?;
    (!up.is_empty() && !uri.is_empty()).then_some((up, uri))
}

pub fn virtual_id(upstream: &str, id: &Value) -> Value {
    Value::String(format!("{ID_PREFIX}{upstream}:{id}"))
}

pub fn split_id(v: &Value) -> Option<(&str, Value)> {
    let s = v.as_str()?.strip_prefix(ID_PREFIX)?;
    let (up, raw) = s.split_once(':')?;
    let id: Value = serde_json::from_str(raw).ok()?;
    (id.is_string() || id.is_number()).then_some((up, id))
}

pub fn virtual_event_id(upstream: &str, id: &str) -> String {
    format!("{upstream}:{id}")
}

pub fn split_event_id(v: &str) -> Option<(&str, &str)> {
    v.split_once(':')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_prefixed_and_bounded() {
        assert_eq!(virtual_name("ref", "echo"), "ref__echo");
        assert_eq!(split_name("ref__echo"), Some(("ref", "echo", true)));
        assert_eq!(split_name("ref__a__b"), Some(("ref", "a__b", true)));
        assert_eq!(split_name("noseparator"), None);

        let long = "x".repeat(80);
        let v = virtual_name("ref", &long);
        assert_eq!(v.len(), MAX_NAME);
        assert_eq!(v, virtual_name("ref", &long), "stable");
        assert_ne!(v, virtual_name("ref", &"x".repeat(81)), "unique");
        let (up, _, exact) = split_name(&v).unwrap();
        assert_eq!((up, exact), ("ref", false));
        // Exactly at the limit: kept whole.
        let edge = "y".repeat(MAX_NAME - 5);
        assert_eq!(virtual_name("ref", &edge).len(), MAX_NAME);
        assert!(virtual_name("ref", &edge).ends_with('y'));
        // Multi-byte characters are never split.
        let v = virtual_name("ref", &"é".repeat(40));
        assert!(v.len() <= MAX_NAME);
    }

    #[test]
    fn uris_ids_and_event_ids_round_trip() {
        let v = virtual_uri("ref", "test://static/resource/1?x=y");
        assert_eq!(v, "stoa://ref/test://static/resource/1?x=y");
        assert_eq!(split_uri(&v), Some(("ref", "test://static/resource/1?x=y")));
        assert_eq!(split_uri("file:///etc/passwd"), None);

        for id in [json!(5), json!("abc:def"), json!(-1)] {
            let v = virtual_id("ev", &id);
            assert_eq!(split_id(&v), Some(("ev", id)));
        }
        assert_eq!(split_id(&json!(5)), None);
        assert_eq!(split_id(&json!("stoa:x:{}")), None);

        assert_eq!(
            split_event_id(&virtual_event_id("ref", "12:3")),
            Some(("ref", "12:3"))
        );
    }
}
