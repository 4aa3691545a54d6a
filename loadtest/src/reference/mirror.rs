//! Mirrored request headers on the 2026-07-28 wire (`Mcp-Method`, `Mcp-Name`,
//! `Mcp-Param-*`): decoding and comparison with the body. Pure functions, no I/O.
//!
//! Rules (from the spec and the conformance suite):
//! - optional whitespace (space, tab) around the value is trimmed;
//! - a value wrapped as `=?base64?…?=` is strict (padded) standard base64 of UTF-8;
//!   anything else, including a partial wrapper, is taken literally;
//! - comparison is exact and case-sensitive;
//! - a value with bytes outside visible ASCII/space/tab is invalid.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use serde_json::{Map, Value};

/// Why a mirrored header was rejected. All map to HTTP 400 / -32020.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MirrorError {
    #[error("missing required header {0}")]
    Missing(String),
    #[error("header {0} does not match the request body")]
    Mismatch(String),
    #[error("header {0} has an invalid value")]
    Invalid(String),
}

const PREFIX: &str = "=?base64?";
const SUFFIX: &str = "?=";

/// Decodes one header value (trimmed, base64 wrapper removed).
pub(crate) fn decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    if raw
        .iter()
        .any(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?.trim_matches([' ', '\t']);
    match text
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
    {
        Some(encoded) => {
            let bytes = STANDARD.decode(encoded).ok()?;
            String::from_utf8(bytes).ok().map(Cow::Owned)
        }
        None => Some(Cow::Borrowed(text)),
    }
}

/// Checks that header `name` is present and mirrors `expected`.
pub(crate) fn expect(headers: &HeaderMap, name: &str, expected: &str) -> Result<(), MirrorError> {
    let raw = headers
        .get(name)
        .ok_or_else(|| MirrorError::Missing(name.to_owned()))?;
    let value = decode(raw.as_bytes()).ok_or_else(|| MirrorError::Invalid(name.to_owned()))?;
    if value == expected {
        Ok(())
    } else {
        Err(MirrorError::Mismatch(name.to_owned()))
    }
}

/// The header form of a body value for `Mcp-Param-*`: strings as-is, integers in
/// decimal, booleans as `true`/`false`. `None` means "no header is sent".
fn param_text(value: Option<&Value>) -> Option<Cow<'_, str>> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Checks every `x-mcp-header` property of a tool's input schema against the
/// `Mcp-Param-<Name>` headers.
pub(crate) fn expect_params(
    headers: &HeaderMap,
    schema: &Value,
    args: &Map<String, Value>,
) -> Result<(), MirrorError> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (prop, def) in props {
        let Some(header) = def.get("x-mcp-header").and_then(Value::as_str) else {
            continue;
        };
        let name = format!("mcp-param-{header}");
        match (param_text(args.get(prop)), headers.get(&name)) {
            (None, None) => {}
            (Some(expected), Some(_)) => expect(headers, &name, &expected)?,
            (Some(_), None) => return Err(MirrorError::Missing(name)),
            (None, Some(_)) => return Err(MirrorError::Mismatch(name)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn decodes_values() {
        let cases: &[(&str, Option<&str>)] = &[
            ("tools/list", Some("tools/list")),
            ("  spaced\t", Some("spaced")),
            ("=?base64?SGVsbG8=?=", Some("Hello")),
            (" =?base64?SGVsbG8=?= ", Some("Hello")),
            ("=?base64?SGVsbG8?=", None),     // padding is required
            ("=?base64?SGVs!!!bG8=?=", None), // not base64
            ("=?base64?SGVsbG8=", Some("=?base64?SGVsbG8=")), // no suffix: literal
            ("SGVsbG8=", Some("SGVsbG8=")),
            ("=?base64?w6k=?=", Some("é")),
        ];
        for (raw, want) in cases {
            assert_eq!(decode(raw.as_bytes()).as_deref(), *want, "decoding {raw:?}");
        }
        assert_eq!(decode(b"caf\xc3\xa9"), None, "raw non-ASCII is invalid");
        assert_eq!(decode(b"a\x01b"), None, "control characters are invalid");
    }

    #[test]
    fn method_and_name_are_case_sensitive_and_trimmed() {
        let h = headers(&[
            ("mcp-method", "TOOLS/LIST"),
            ("mcp-name", "  test_simple_text  "),
        ]);
        assert_eq!(
            expect(&h, "mcp-method", "tools/list"),
            Err(MirrorError::Mismatch("mcp-method".into()))
        );
        assert_eq!(expect(&h, "mcp-name", "test_simple_text"), Ok(()));
        assert_eq!(
            expect(&h, "mcp-other", "x"),
            Err(MirrorError::Missing("mcp-other".into()))
        );
    }

    #[test]
    fn checks_param_headers() {
        let schema = json!({"type":"object","properties":{
            "region":{"type":"string","x-mcp-header":"Region"},
            "count":{"type":"integer","x-mcp-header":"Count"},
            "plain":{"type":"string"}}});
        let args = |v: Value| v.as_object().cloned().expect("object");
        let ok = headers(&[
            ("mcp-param-region", "=?base64?SGVsbG8=?="),
            ("mcp-param-count", "3"),
        ]);
        assert_eq!(
            expect_params(
                &ok,
                &schema,
                &args(json!({"region":"Hello","count":3,"plain":"x"}))
            ),
            Ok(())
        );
        let absent = headers(&[("mcp-param-count", "3")]);
        assert!(expect_params(&absent, &schema, &args(json!({"region":"x","count":3}))).is_err());
        let unpadded = headers(&[
            ("mcp-param-region", "=?base64?SGVsbG8?="),
            ("mcp-param-count", "3"),
        ]);
        assert!(
            expect_params(
                &unpadded,
                &schema,
                &args(json!({"region":"Hello","count":3}))
            )
            .is_err()
        );
        let null = headers(&[]);
        assert_eq!(
            expect_params(&null, &schema, &args(json!({"region":null}))),
            Ok(())
        );
    }
}
