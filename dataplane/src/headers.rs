//! A request's head as the gateway reads it, whichever HTTP version brought
//! it: `Head` (method, target, version) and `Headers`, its fields in order.
//!
//! `Headers` is not a hash map. An HTTP/1.1 head is kept as the bytes it
//! came in and where each field sits in them, so parsing one builds no
//! names and no values and hashes nothing; HTTP/2 and HTTP/3 heads are
//! copied into the same form. The names the gateway reads or forwards are
//! interned as each field is found (`Name`: one length switch and a
//! comparison or two), so a lookup compares one byte per field: a request
//! carries a dozen fields and the gateway asks for a few, which costs less
//! than building a `HeaderMap` to ask it (callgrind: see
//! docs/benchmarks.md).
//!
//! Every value in a `Headers` is a valid field value (RFC 9110 §5.5: no CR,
//! LF or NUL): httparse refuses heads with anything else, and a
//! `HeaderMap`'s values are `HeaderValue`s. So a value can be written into
//! another head as it is.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

/// A field name the gateway reads or forwards (`OTHER`: any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name(u8);

/// Lower case, in `Name`'s order.
static NAMES: [&str; 21] = [
    "",
    "accept",
    "allow",
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "expect",
    "host",
    "last-event-id",
    "mcp-method",
    "mcp-name",
    "mcp-protocol-version",
    "mcp-session-id",
    "origin",
    "traceparent",
    "tracestate",
    "transfer-encoding",
    "user-agent",
    "x-api-key",
    "x-request-id",
];

impl Name {
    pub const OTHER: Name = Name(0);
    pub const ACCEPT: Name = Name(1);
    pub const ALLOW: Name = Name(2);
    pub const AUTHORIZATION: Name = Name(3);
    pub const CONNECTION: Name = Name(4);
    pub const CONTENT_LENGTH: Name = Name(5);
    pub const CONTENT_TYPE: Name = Name(6);
    pub const EXPECT: Name = Name(7);
    pub const HOST: Name = Name(8);
    pub const LAST_EVENT_ID: Name = Name(9);
    pub const MCP_METHOD: Name = Name(10);
    pub const MCP_NAME: Name = Name(11);
    pub const MCP_PROTOCOL_VERSION: Name = Name(12);
    pub const MCP_SESSION_ID: Name = Name(13);
    pub const ORIGIN: Name = Name(14);
    pub const TRACEPARENT: Name = Name(15);
    pub const TRACESTATE: Name = Name(16);
    pub const TRANSFER_ENCODING: Name = Name(17);
    pub const USER_AGENT: Name = Name(18);
    pub const X_API_KEY: Name = Name(19);
    pub const X_REQUEST_ID: Name = Name(20);

    /// The name in lower case (`OTHER`: empty).
    pub fn as_str(self) -> &'static str {
        NAMES[self.0 as usize]
    }

    /// The name `raw` is, in any case. Length and first letter tell the
    /// known names apart; one comparison confirms (`NAMES` are lower case).
    pub fn of(raw: &[u8]) -> Name {
        let Some(first) = raw.first() else {
            return Name::OTHER;
        };
        let i = match (raw.len(), first.to_ascii_lowercase()) {
            (4, b'h') => 8,
            (5, b'a') => 2,
            (6, b'a') => 1,
            (6, b'e') => 7,
            (6, b'o') => 14,
            (8, b'm') => 11,
            (9, b'x') => 19,
            (10, b'c') => 4,
            (10, b'm') => 10,
            (10, b't') => 16,
            (10, b'u') => 18,
            (11, b't') => 15,
            (12, b'c') => 6,
            (12, b'x') => 20,
            (13, b'a') => 3,
            (13, b'l') => 9,
            (14, b'c') => 5,
            (14, b'm') => 13,
            (17, b't') => 17,
            (20, b'm') => 12,
            _ => return Name::OTHER,
        };
        let name = NAMES[i].as_bytes();
        // Most clients write names in lower case, as HTTP/2 must.
        let same = raw == name
            || raw
                .iter()
                .zip(name)
                .all(|(r, n)| r.to_ascii_lowercase() == *n);
        if same { Name(i as u8) } else { Name::OTHER }
    }
}

/// Where a field's name and value sit in a head, (start, length) of each,
/// and which name it is. Offsets fit in `u32`: heads are read under a
/// limit far below 4 GiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub name: (u32, u32),
    pub value: (u32, u32),
    pub id: Name,
}

/// On the heap: a head is moved several times on its way to the gateway,
/// and spans inline made each move a copy of hundreds of bytes.
pub(crate) type Spans = Vec<Span>;

/// A head's fields, in the order they came, names in the case they came.
/// Its `Debug` form hides credentials (see `redacted`).
#[derive(Clone, Default)]
pub struct Headers {
    bytes: Bytes,
    spans: Spans,
}

/// Fields whose values a `Debug` print of a head hides: the client's
/// credentials, and the session id (a bearer of the session).
fn redacted(id: Name, name: &[u8]) -> bool {
    matches!(
        id,
        Name::AUTHORIZATION | Name::X_API_KEY | Name::MCP_SESSION_ID
    ) || name.eq_ignore_ascii_case(b"proxy-authorization")
        || name.eq_ignore_ascii_case(b"cookie")
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (id, name, value) in self.iter() {
            let shown = if redacted(id, name) {
                "<redacted>".into()
            } else {
                String::from_utf8_lossy(value)
            };
            map.entry(&String::from_utf8_lossy(name), &shown);
        }
        map.finish()
    }
}

impl Headers {
    /// The fields at `spans` in `bytes` (a head httparse accepted).
    pub(crate) fn from_head(bytes: Bytes, spans: Spans) -> Headers {
        Headers { bytes, spans }
    }

    /// A copy of `map`'s fields, names in lower case.
    pub fn from_map(map: &HeaderMap) -> Headers {
        let size: usize = map.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        let mut bytes = BytesMut::with_capacity(size);
        let mut spans = Spans::with_capacity(map.len());
        let mut put = |b: &[u8]| {
            let at = bytes.len() as u32;
            bytes.extend_from_slice(b);
            (at, b.len() as u32)
        };
        for (k, v) in map {
            // A `HeaderValue` made unchecked could hold them; no head may.
            if v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                continue;
            }
            let raw = k.as_str().as_bytes();
            spans.push(Span {
                name: put(raw),
                value: put(v.as_bytes()),
                id: Name::of(raw),
            });
        }
        Headers {
            bytes: bytes.freeze(),
            spans,
        }
    }

    fn at(&self, (at, len): (u32, u32)) -> &[u8] {
        &self.bytes[at as usize..(at + len) as usize]
    }

    fn shared(&self, (at, len): (u32, u32)) -> Bytes {
        self.bytes.slice(at as usize..(at + len) as usize)
    }

    /// The first value of `name`.
    pub fn get(&self, name: Name) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// The first value of `name` if it is visible ASCII, as
    /// `HeaderValue::to_str` reads values.
    pub fn get_str(&self, name: Name) -> Option<&str> {
        text(self.get(name)?)
    }

    /// The first value of `name`, as a `HeaderValue` sharing these bytes.
    pub fn value(&self, name: Name) -> Option<HeaderValue> {
        let span = self.spans.iter().find(|s| s.id == name)?;
        HeaderValue::from_maybe_shared(self.shared(span.value)).ok()
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: Name) -> impl DoubleEndedIterator<Item = &[u8]> {
        debug_assert!(name != Name::OTHER, "look other names up by text");
        self.spans
            .iter()
            .filter(move |s| s.id == name)
            .map(|s| self.at(s.value))
    }

    pub fn contains(&self, name: Name) -> bool {
        self.spans.iter().any(|s| s.id == name)
    }

    /// The first value of a field named `name` (in any case), for names
    /// that are not a `Name`.
    pub fn get_named(&self, name: &str) -> Option<&[u8]> {
        self.spans
            .iter()
            .find(|s| self.at(s.name).eq_ignore_ascii_case(name.as_bytes()))
            .map(|s| self.at(s.value))
    }

    /// Every field as (name, name as it came, value).
    pub fn iter(&self) -> impl Iterator<Item = (Name, &[u8], &[u8])> {
        self.spans
            .iter()
            .map(|s| (s.id, self.at(s.name), self.at(s.value)))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// A `HeaderMap` of the fields named in `keep` only.
    pub fn to_map(&self, keep: &[(Name, HeaderName)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for s in &self.spans {
            if let Some((_, name)) = keep.iter().find(|(id, _)| *id == s.id)
                && let Ok(v) = HeaderValue::from_maybe_shared(self.shared(s.value))
            {
                map.append(name.clone(), v);
            }
        }
        map
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    /// Fields from text, as tests write them.
    ///
    /// # Panics
    /// On a name or value that is not valid in a head.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Headers {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            let name = HeaderName::from_bytes(k.as_ref().as_bytes()).expect("a field name");
            map.append(
                name,
                HeaderValue::from_str(v.as_ref()).expect("a field value"),
            );
        }
        Headers::from_map(&map)
    }
}

/// A `HeaderMap`'s fields as `Headers::iter` yields them.
pub fn map_fields(map: &HeaderMap) -> impl Iterator<Item = (Name, &[u8], &[u8])> {
    map.iter().map(|(k, v)| {
        let raw = k.as_str().as_bytes();
        (Name::of(raw), raw, v.as_bytes())
    })
}

/// A field value as text if it is visible ASCII (and tabs), as
/// `HeaderValue::to_str` reads values. Values hold no control characters
/// but tabs (see the module's note), so ASCII is all there is to check.
pub fn text(v: &[u8]) -> Option<&str> {
    if v.is_ascii() {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

/// A request's head: all the gateway reads of a request but its body.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: Headers,
}

impl Head {
    pub fn new(method: Method, uri: Uri) -> Head {
        Head {
            method,
            uri,
            version: Version::HTTP_11,
            headers: Headers::default(),
        }
    }
}

impl From<http::request::Parts> for Head {
    /// An HTTP/2 or HTTP/3 request's head (hyper and h3 hand over `Parts`).
    fn from(p: http::request::Parts) -> Head {
        Head {
            headers: Headers::from_map(&p.headers),
            method: p.method,
            uri: p.uri,
            version: p.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn names_are_interned_in_any_case() {
        for (i, text) in NAMES.iter().enumerate().skip(1) {
            let name = Name(i as u8);
            assert_eq!(name.as_str(), *text);
            assert_eq!(Name::of(text.as_bytes()), name, "{text}");
            assert_eq!(Name::of(text.to_uppercase().as_bytes()), name, "{text}");
            // Each is the name `http` spells the same way.
            assert_eq!(HeaderName::from_static(text).as_str(), *text);
        }
        for other in ["", "x", "mcp-session-i", "content-lengthx", "x-api-kez"] {
            assert_eq!(Name::of(other.as_bytes()), Name::OTHER, "{other}");
        }
    }

    #[test]
    fn debug_prints_hide_credentials() {
        let h: Headers = [
            ("Authorization", "Bearer stoa_secret"),
            ("X-API-Key", "stoa_secret2"),
            ("mcp-session-id", "sealed-secret3"),
            ("Cookie", "a=secret4"),
            ("Proxy-Authorization", "Basic secret5"),
            ("accept", "application/json"),
        ]
        .into_iter()
        .collect();
        let mut head = Head::new(Method::POST, Uri::from_static("/mcp"));
        head.headers = h.clone();
        let shown = format!("{h:?} {head:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains(r#""accept": "application/json""#), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 10, "{shown}");
    }

    #[test]
    fn lookups_ignore_case_and_keep_order() {
        let h: Headers = [
            ("Accept", "application/json"),
            ("x-custom", "1"),
            ("ACCEPT", "text/event-stream"),
        ]
        .into_iter()
        .collect();
        assert_eq!(h.get(Name::ACCEPT), Some(&b"application/json"[..]));
        let all: Vec<&[u8]> = h.get_all(Name::ACCEPT).collect();
        assert_eq!(all, [&b"application/json"[..], b"text/event-stream"]);
        assert_eq!(h.get_named("X-Custom"), Some(&b"1"[..]));
        assert!(!h.contains(Name::ORIGIN));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn text_values_read_as_header_value_reads_them() {
        let mut map = HeaderMap::new();
        map.insert("accept", HeaderValue::from_static("plain\ttext"));
        map.insert("origin", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let h = Headers::from_map(&map);
        for name in [Name::ACCEPT, Name::ORIGIN] {
            assert_eq!(
                h.get_str(name),
                map.get(name.as_str()).unwrap().to_str().ok(),
                "{name:?}"
            );
        }
        assert_eq!(h.value(Name::ORIGIN).unwrap(), map["origin"]);
    }

    #[test]
    fn a_map_keeps_only_what_is_asked_for() {
        let h: Headers = [("content-type", "a"), ("date", "b"), ("Content-Type", "c")]
            .into_iter()
            .collect();
        let m = h.to_map(&[
            (Name::CONTENT_TYPE, header::CONTENT_TYPE),
            (Name::ALLOW, header::ALLOW),
        ]);
        assert_eq!(m.len(), 2);
        let v: Vec<_> = m.get_all(header::CONTENT_TYPE).iter().collect();
        assert_eq!(v, ["a", "c"]);
    }
}
