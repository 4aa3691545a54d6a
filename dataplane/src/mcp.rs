//! MCP on the wire: protocol revisions, the header rules of Streamable HTTP,
//! and a cheap look into a JSON-RPC body that does not copy it.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue};

mod scan;

use scan::Reader;

use crate::{
    error::GatewayError,
    headers::{Headers, Name, text},
};

// Header names as `HeaderName`s: a lookup by one skips parsing the name.
pub const HDR_SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
pub const HDR_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub const HDR_METHOD: HeaderName = HeaderName::from_static("mcp-method");
pub const HDR_NAME: HeaderName = HeaderName::from_static("mcp-name");
pub const HDR_LAST_EVENT: HeaderName = HeaderName::from_static("last-event-id");

/// Protocol revisions the gateway speaks, oldest first.
pub const VERSIONS: &[&str] = &["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];
pub const LATEST: &str = "2025-11-25";
/// The stateless revision: no sessions, every request self-describing.
pub const STATELESS: &str = "2026-07-28";
/// What a request without `MCP-Protocol-Version` is assumed to speak (spec).
pub const DEFAULT_VERSION: &str = "2025-03-26";

/// Requests that only read: sending one twice changes nothing at the
/// upstream, so the relay may send it again when a reused connection closes
/// without answering (`client::Outgoing::replay_safe`). Everything else, above
/// all `tools/call`, may act, and is never sent twice.
pub fn replay_safe(method: &str) -> bool {
    matches!(
        method,
        "ping"
            | "tools/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "prompts/list"
            | "prompts/get"
            | "completion/complete"
    )
}

/// Methods whose 2026-07-28 results carry cache hints (`ttlMs`,
/// `cacheScope`).
pub fn cacheable(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

/// What the gateway relays is served under a key's grants, so no result of
/// it may be cached and served across authorization contexts: a
/// `cacheScope` of "public" (any cache may serve it to anyone) becomes
/// "private" (only within the same authorization context). Members are
/// reached with `get`, here and on every relayed message: a JSON pointer
/// allocates two strings per token.
pub fn keep_private(msg: &mut serde_json::Value) {
    if let Some(scope) = msg.get_mut("result").and_then(|r| r.get_mut("cacheScope"))
        && scope.as_str() == Some("public")
    {
        *scope = serde_json::Value::from("private");
    }
}

/// The members of an answer that `/mcp` rewrites (`aggregate::Rewrite`),
/// and where they are, found without building the answer as a value. Read
/// with the peek's strict reader, so an answer it reads is JSON.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerShape {
    /// A `method`: the body is a request or a notification.
    pub method: bool,
    /// `result.cacheScope`, `result.contents`, `result.resultType`.
    pub cache_scope: bool,
    pub contents: bool,
    pub result_type: bool,
    /// A `result` object: where its members begin (just after its `{`),
    /// and whether it has none.
    pub result: Option<Members>,
    /// `result._meta`: `Some(None)` if it is not an object.
    pub meta: Option<Option<Members>>,
    /// The bytes of `result._meta[META_SERVER_INFO]`'s value.
    pub server_info: Option<std::ops::Range<usize>>,
}

/// Where an object's members begin (just after its `{`), and whether it
/// has any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Members {
    pub at: usize,
    pub empty: bool,
}

impl Members {
    /// After the `{` just read.
    fn here(r: &mut Reader<'_>) -> Members {
        let at = r.pos();
        Members {
            at,
            empty: r.at(b'}'),
        }
    }
}

/// An answer's shape: `None` if it is not one JSON object, or names a
/// member read here twice (which a parser into values would take).
pub fn answer_shape(body: &[u8]) -> Option<AnswerShape> {
    let text = std::str::from_utf8(body).ok()?;
    let mut r = Reader::new(text);
    let mut shape = AnswerShape::default();
    r.expect(b'{', "expected `{`").ok()?;
    r.fields(&["method", "result"], |r, i| {
        if i == 0 {
            shape.method = true;
            return r.skip();
        }
        if !r.eat(b'{') {
            return r.skip();
        }
        shape.result = Some(Members::here(r));
        r.fields(
            &["cacheScope", "contents", "resultType", "_meta"],
            |r, i| {
                match i {
                    0 => shape.cache_scope = true,
                    1 => shape.contents = true,
                    2 => shape.result_type = true,
                    _ if r.eat(b'{') => {
                        shape.meta = Some(Some(Members::here(r)));
                        return r.fields(&[META_SERVER_INFO], |r, _| {
                            let start = r.pos();
                            r.skip()?;
                            shape.server_info = Some(start..r.pos());
                            Ok(())
                        });
                    }
                    _ => shape.meta = Some(None),
                }
                r.skip()
            },
        )
    })
    .ok()?;
    r.end().ok()?;
    Some(shape)
}

/// Where a 2026-07-28 result names its server.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Where 2026-07-28 notifications and the final result of a
/// `subscriptions/listen` stream name the subscription.
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";

/// The `SubscriptionsListenResult` that ends a listen stream on purpose
/// (the gateway drains, say), so the client knows to listen again.
pub fn listen_ended(id: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
        "resultType": "complete",
        "_meta": {META_SUBSCRIPTION: id},
    }})
}

pub fn is_supported(v: &str) -> bool {
    VERSIONS.contains(&v)
}

/// The fields of a JSON-RPC message the gateway routes on, borrowed from the
/// body. The body itself is forwarded byte for byte.
#[derive(Debug, Default)]
pub struct Peek<'a> {
    pub jsonrpc: Option<Cow<'a, str>>,
    /// The id's JSON text. Present-but-null stays `Some("null")` so it can
    /// be refused.
    pub id: Option<&'a str>,
    pub method: Option<Cow<'a, str>>,
    pub params: Option<PeekParams<'a>>,
    /// The JSON text of `result` and `error`, unless absent or null.
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// The members of `params` the gateway reads. A `params` array (JSON-RPC's
/// by-position form, which MCP does not use) has none of them.
#[derive(Debug, Default)]
pub struct PeekParams<'a> {
    pub name: Option<Cow<'a, str>>,
    pub uri: Option<Cow<'a, str>>,
    pub protocol_version: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

impl<'a> Peek<'a> {
    /// Parses one JSON-RPC message; batches and non-JSON-RPC bodies are refused.
    pub fn parse(body: &'a [u8], version: &str) -> Result<(Peek<'a>, Kind), GatewayError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        match first {
            None => return Err(GatewayError::Parse("empty body".into())),
            Some(b'[') => return Err(GatewayError::Batch(version.to_owned())),
            Some(b'{') => {}
            Some(_) => {
                return Err(GatewayError::InvalidRequest(
                    "the body must be a JSON object".into(),
                ));
            }
        }
        // JSON is UTF-8 (RFC 8259): checked once here, not string by string.
        let text = std::str::from_utf8(body)
            .map_err(|e| GatewayError::Parse(format!("the body is not UTF-8: {e}")))?;
        let peek = read_peek(text).map_err(|e| match e {
            scan::Error::Syntax(m) => GatewayError::Parse(m),
            scan::Error::Data(m) => GatewayError::InvalidRequest(m),
        })?;
        if peek.jsonrpc.as_deref() != Some("2.0") {
            return Err(GatewayError::InvalidRequest(
                "\"jsonrpc\" must be \"2.0\"".into(),
            ));
        }
        let kind = match (
            &peek.method,
            &peek.id,
            peek.result.is_some() || peek.error.is_some(),
        ) {
            (Some(_), Some(id), false) => {
                check_id(id)?;
                Kind::Request
            }
            (Some(_), None, false) => Kind::Notification,
            (None, Some(_), true) => Kind::Response,
            _ => {
                return Err(GatewayError::InvalidRequest(
                    "expected a request, a notification or a response".into(),
                ));
            }
        };
        Ok((peek, kind))
    }

    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// The name a request acts on, as mirrored in `Mcp-Name`: the tool or
    /// prompt name, or the resource URI.
    pub fn target(&self) -> Option<&str> {
        let p = self.params.as_ref()?;
        match self.method() {
            "tools/call" | "prompts/get" => p.name.as_deref(),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.uri.as_deref(),
            _ => None,
        }
    }
}

/// The peek's fields from one JSON object (whose `{` comes first).
fn read_peek(text: &str) -> Result<Peek<'_>, scan::Error> {
    let mut r = Reader::new(text);
    r.expect(b'{', "expected `{`")?;
    let mut peek = Peek::default();
    let known = ["jsonrpc", "id", "method", "params", "result", "error"];
    r.fields(&known, |r, i| {
        match i {
            0 => peek.jsonrpc = r.string_or_null("jsonrpc")?,
            1 => peek.id = Some(r.raw()?),
            2 => peek.method = r.string_or_null("method")?,
            3 => peek.params = read_params(r)?,
            4 => peek.result = r.raw_unless_null()?,
            _ => peek.error = r.raw_unless_null()?,
        }
        Ok(())
    })?;
    r.end()?;
    Ok(peek)
}

fn read_params<'a>(r: &mut Reader<'a>) -> Result<Option<PeekParams<'a>>, scan::Error> {
    if r.null()? {
        return Ok(None);
    }
    if r.at(b'[') {
        r.skip()?;
        return Ok(Some(PeekParams::default()));
    }
    if !r.eat(b'{') {
        return r.wrong_type("params", "an object");
    }
    let mut p = PeekParams::default();
    r.fields(&["name", "uri", "protocolVersion"], |r, i| {
        match i {
            0 => p.name = r.string_or_null("name")?,
            1 => p.uri = r.string_or_null("uri")?,
            _ => p.protocol_version = r.string_or_null("protocolVersion")?,
        }
        Ok(())
    })?;
    Ok(Some(p))
}

fn check_id(id: &str) -> Result<(), GatewayError> {
    // MCP: ids are strings or integers, never null.
    match id.as_bytes().first() {
        Some(b'"') | Some(b'-') | Some(b'0'..=b'9') => Ok(()),
        _ => Err(GatewayError::InvalidRequest(
            "\"id\" must be a string or an integer".into(),
        )),
    }
}

/// A request's id as a value, for the error responses that answer it. Small
/// integers, the ids most clients send, are read without a parser.
pub fn id_value(text: &str) -> Option<serde_json::Value> {
    if (1..=18).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = text.parse::<u64>()
    {
        return Some(n.into());
    }
    serde_json::from_str(text).ok()
}

/// The protocol version a request speaks: the header, or the spec default.
pub fn request_version(headers: &Headers) -> Result<Cow<'static, str>, GatewayError> {
    match headers.get(Name::MCP_PROTOCOL_VERSION) {
        None => Ok(Cow::Borrowed(DEFAULT_VERSION)),
        Some(v) => {
            let s = text(v).ok_or_else(|| GatewayError::ProtocolVersion("<non-ASCII>".into()))?;
            VERSIONS
                .iter()
                .find(|known| **known == s)
                .map(|k| Cow::Borrowed(*k))
                .ok_or_else(|| GatewayError::ProtocolVersion(s.to_owned()))
        }
    }
}

/// `Mcp-Method` / `Mcp-Name` mirror the body; a client that sends them must
/// send them right (the stateless revision requires them on requests).
pub fn check_mirrored_headers(
    headers: &Headers,
    peek: &Peek<'_>,
    kind: Kind,
    version: &str,
) -> Result<(), GatewayError> {
    let stateless = version == STATELESS;
    let method_hdr = header_str(headers, Name::MCP_METHOD, "Mcp-Method")?;
    let method_hdr = method_hdr.as_deref();
    if kind != Kind::Response {
        match method_hdr {
            Some(found) if found != peek.method() => {
                return Err(GatewayError::HeaderMismatch {
                    header: "Mcp-Method",
                    found: found.to_owned(),
                    expected: peek.method().to_owned(),
                });
            }
            None if stateless => {
                return Err(GatewayError::HeaderMismatch {
                    header: "Mcp-Method",
                    found: String::new(),
                    expected: peek.method().to_owned(),
                });
            }
            _ => {}
        }
    }
    let name_hdr = header_str(headers, Name::MCP_NAME, "Mcp-Name")?;
    match (name_hdr.as_deref(), peek.target()) {
        (Some(found), Some(expected)) if found != expected => Err(GatewayError::HeaderMismatch {
            header: "Mcp-Name",
            found: found.to_owned(),
            expected: expected.to_owned(),
        }),
        (Some(found), None) => Err(GatewayError::HeaderMismatch {
            header: "Mcp-Name",
            found: found.to_owned(),
            expected: String::new(),
        }),
        (None, Some(expected)) if stateless => Err(GatewayError::HeaderMismatch {
            header: "Mcp-Name",
            found: String::new(),
            expected: expected.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The wrapper of a mirrored header value sent as base64 (2026-07-28).
const B64_PREFIX: &str = "=?base64?";
const B64_SUFFIX: &str = "?=";

/// A value as a mirrored header carries it (`Mcp-Name`, `Mcp-Param-*`):
/// as is when it is safe plain ASCII, else as `=?base64?<standard base64,
/// padded, of its UTF-8>?=`. Not safe: non-ASCII, control characters (tab
/// included), whitespace at either end (a header's ends are trimmed), and
/// text that starts like the wrapper (a server would decode it).
pub fn mirror_value(s: &str) -> HeaderValue {
    let plain = s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && !s.starts_with(B64_PREFIX);
    if plain && let Ok(v) = HeaderValue::from_str(s) {
        return v;
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(s);
    HeaderValue::try_from(format!("{B64_PREFIX}{b64}{B64_SUFFIX}"))
        .expect("base64 and its wrapper are visible ASCII")
}

/// A mirrored header's value: surrounding whitespace trimmed, and the
/// `=?base64?…?=` form (used for values that are not plain ASCII) decoded.
fn header_str<'h>(
    headers: &'h Headers,
    name: Name,
    label: &'static str,
) -> Result<Option<Cow<'h, str>>, GatewayError> {
    let bad = |found: &str| GatewayError::HeaderMismatch {
        header: label,
        found: found.to_owned(),
        expected: String::new(),
    };
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    let s = text(v)
        .ok_or_else(|| bad("<non-ASCII>"))?
        .trim_matches([' ', '\t']);
    match s
        .strip_prefix(B64_PREFIX)
        .and_then(|r| r.strip_suffix(B64_SUFFIX))
    {
        Some(b64) => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| bad(s))?;
            String::from_utf8(raw)
                .map(|d| Some(Cow::Owned(d)))
                .map_err(|_| bad(s))
        }
        None => Ok(Some(Cow::Borrowed(s))),
    }
}

/// POST bodies must be JSON, and the client must accept both JSON and SSE.
pub fn check_post_headers(headers: &Headers) -> Result<(), GatewayError> {
    check_content_type(headers)?;
    if !accepts_all(headers, &["application/json", "text/event-stream"]) {
        return Err(GatewayError::NotAcceptable);
    }
    Ok(())
}

/// `Mcp-Param-*`, in any case: a tool argument mirrored into a header
/// (2026-07-28).
pub fn is_param_header(raw: &[u8]) -> bool {
    raw.len() >= 10 && raw[..10].eq_ignore_ascii_case(b"mcp-param-")
}

/// A `Content-Type` value without its parameters, trimmed.
pub fn media_type(ct: &str) -> &str {
    // A byte loop: a dozen bytes cost less than a `str` pattern search.
    let end = ct.bytes().position(|b| b == b';').unwrap_or(ct.len());
    ct[..end].trim()
}

pub fn check_content_type(headers: &Headers) -> Result<(), GatewayError> {
    let ct = headers.get_str(Name::CONTENT_TYPE).unwrap_or("");
    if !media_type(ct).eq_ignore_ascii_case("application/json") {
        return Err(GatewayError::ContentType(ct.to_owned()));
    }
    Ok(())
}

pub fn accepts(headers: &Headers, mime: &str) -> bool {
    accepts_all(headers, &[mime])
}

/// Whether `Accept` admits every one of `mimes` (at most 8), read in one
/// pass over bytes (splitting it as `str` cost a POST 1k instructions). A
/// value that is not ASCII admits nothing.
pub fn accepts_all(headers: &Headers, mimes: &[&str]) -> bool {
    debug_assert!(mimes.len() <= 8);
    let mut wanted = ((1u16 << mimes.len()) - 1) as u8;
    for v in headers.get_all(Name::ACCEPT).filter(|v| v.is_ascii()) {
        for item in v.split(|&b| b == b',') {
            let end = item.iter().position(|&b| b == b';').unwrap_or(item.len());
            let range = item[..end].trim_ascii();
            for (i, mime) in mimes.iter().enumerate() {
                if admits(range, mime.as_bytes()) {
                    wanted &= !(1 << i);
                }
            }
            if wanted == 0 {
                return true;
            }
        }
    }
    false
}

/// Whether one media range of `Accept` admits `mime` (lengths first: most
/// ranges are told apart by them).
fn admits(range: &[u8], mime: &[u8]) -> bool {
    let n = range.len();
    if range == b"*/*" {
        return true;
    }
    if n == mime.len() {
        return range.eq_ignore_ascii_case(mime);
    }
    // `type/*`: the type and its slash, as `mime` begins, then `*`.
    n >= 2
        && n < mime.len()
        && range[n - 1] == b'*'
        && range[n - 2] == b'/'
        && range[..n - 1].eq_ignore_ascii_case(&mime[..n - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    /// What the peek was before `scan`: serde's derive, the oracle that
    /// the scanner must agree with.
    mod oracle {
        use std::borrow::Cow;

        use serde::Deserialize;
        use serde_json::value::RawValue;

        #[derive(Deserialize)]
        pub struct Peek<'a> {
            #[serde(borrow, default, deserialize_with = "borrowed")]
            pub jsonrpc: Option<Cow<'a, str>>,
            #[serde(borrow, default, deserialize_with = "present")]
            pub id: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "borrowed")]
            pub method: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            pub params: Option<Params<'a>>,
            #[serde(borrow, default)]
            pub result: Option<&'a RawValue>,
            #[serde(borrow, default)]
            pub error: Option<&'a RawValue>,
        }

        #[derive(Deserialize)]
        pub struct Params<'a> {
            #[serde(borrow, default, deserialize_with = "borrowed")]
            pub name: Option<Cow<'a, str>>,
            #[serde(borrow, default, deserialize_with = "borrowed")]
            pub uri: Option<Cow<'a, str>>,
            #[serde(
                rename = "protocolVersion",
                borrow,
                default,
                deserialize_with = "borrowed"
            )]
            pub protocol_version: Option<Cow<'a, str>>,
        }

        fn borrowed<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Cow<'de, str>>, D::Error> {
            #[derive(Deserialize)]
            struct B<'a>(#[serde(borrow)] Cow<'a, str>);
            Option::<B<'de>>::deserialize(d).map(|o| o.map(|b| b.0))
        }

        fn present<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<&'de RawValue>, D::Error> {
            <&RawValue>::deserialize(d).map(Some)
        }

        /// The oracle's verdict in the scanner's terms: "syntax", "data",
        /// or the fields read.
        pub fn verdict(text: &str) -> Result<String, &'static str> {
            match serde_json::from_str::<Peek>(text) {
                Ok(p) => Ok(super::show(
                    p.jsonrpc.as_deref(),
                    p.id.map(RawValue::get),
                    p.method.as_deref(),
                    p.params.as_ref().map(|q| {
                        [
                            q.name.as_deref(),
                            q.uri.as_deref(),
                            q.protocol_version.as_deref(),
                        ]
                    }),
                    p.result.map(RawValue::get),
                    p.error.map(RawValue::get),
                )),
                Err(e) if e.is_syntax() || e.is_eof() => Err("syntax"),
                Err(_) => Err("data"),
            }
        }
    }

    fn show(
        jsonrpc: Option<&str>,
        id: Option<&str>,
        method: Option<&str>,
        params: Option<[Option<&str>; 3]>,
        result: Option<&str>,
        error: Option<&str>,
    ) -> String {
        format!("{jsonrpc:?} {id:?} {method:?} {params:?} {result:?} {error:?}")
    }

    fn scanned(text: &str) -> Result<String, &'static str> {
        match read_peek(text) {
            Ok(p) => Ok(show(
                p.jsonrpc.as_deref(),
                p.id,
                p.method.as_deref(),
                p.params.as_ref().map(|q| {
                    [
                        q.name.as_deref(),
                        q.uri.as_deref(),
                        q.protocol_version.as_deref(),
                    ]
                }),
                p.result,
                p.error,
            )),
            Err(scan::Error::Syntax(_)) => Err("syntax"),
            Err(scan::Error::Data(_)) => Err("data"),
        }
    }

    /// Bodies the scanner and serde must read alike.
    const CORPUS: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"ping"}}}"#,
        r#"{"jsonrpc":"2.0","id":"a-1","method":"resources/read","params":{"uri":"file:///x","_meta":{"progressToken":7}}}"#,
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{},"roots":{"listChanged":true}},"clientInfo":{"name":"c","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"x"}],"isError":false}}"#,
        r#"{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"no","data":[1,2.5e-3,null,true,-0.0E+1]}}"#,
        r#" { "jsonrpc" : "2.0" , "id" : -12 , "method" : "ping" , "params" : null } "#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec\u0068o \ud83d\ude00 \n\"\/\\\b\f\r\t"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":7}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"s"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","method":"y"}"#,
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":"a","name":"b"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{},"result":null,"error":null}"#,
        r#"{"jsonrpc":2,"id":1,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":{"a":[]},"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","extra":[[[{"a":{"b":[1,{"c":"\u00e9"}]}}]]]}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x\ud800"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x\udc00"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x\ud800\u0041"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","extra":"\ud800"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","\ud800":1}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"é ü 漢字"}"#,
        r#"{"jsonrpc":"2.0","id":01,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1.,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1e,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":-,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x",}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x"} x"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":[1,]}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":{"k"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":{1:2}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":tru}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":"\x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":"\u12"}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"a\":\"tab\there\"}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\tx\"}",
        r#"{"jsonrpc":"2.0","id":"0123456789abcdefghij","method":"notifications/progress/with/a/long/name","params":{"name":"a tool whose name is longer than sixteen bytes","uri":"éééééééééé漢字漢字漢字 ü"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"long/methods/name\with/escapesAin/the/middle/of/it","params":{"name":"0123456789abcde"f"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","a":{"\ud800":1}}"#,
        r#"{"jsonrpc":"2.0","id":{"\udc00":1},"method":"x"}"#,
        r#"{"error":{"\udc00":0},"error":1}"#,
        r#"{"jsonrpc":1e400,"id":1,"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":-5e671}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":1.7976931348623158e308}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":0e99999999999999999999}"#,
        r#"{"jsonrpc":"2.0","id":1e400,"method":"x"}"#,
        r#"{}"#,
        r#"{"#,
        r#"{"jsonrpc""#,
        r#"{"jsonrpc":"2.0""#,
        r#"{"jsonrpc":"2.0","#,
    ];

    /// Every corpus body, and every truncation and one-byte change of it,
    /// is read by the scanner as serde reads it.
    #[test]
    fn the_scanner_reads_bodies_as_serde_does() {
        let mut checked = 0;
        let mut check = |text: &str| {
            // `Peek::parse` hands the scanner objects only.
            if !text.trim_start().starts_with('{') {
                return;
            }
            assert_eq!(scanned(text), oracle::verdict(text), "{text}");
            checked += 1;
        };
        let nested = |n: usize| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"x","a":{}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let mut corpus: Vec<String> = CORPUS.iter().map(|s| s.to_string()).collect();
        corpus.extend([nested(126), nested(127), nested(128)]);
        // Deeper than 128 is refused on purpose (see `scan`), where serde
        // skips it.
        assert!(matches!(
            read_peek(&nested(129)),
            Err(scan::Error::Syntax(_))
        ));
        assert!(oracle::verdict(&nested(129)).is_ok());
        let replacements = b"{}[]\",:\\ 0-.eE+tfnu\x01aA";
        for body in &corpus {
            check(body);
            for cut in (0..body.len()).filter(|&c| body.is_char_boundary(c)) {
                check(&body[..cut]);
            }
            for i in 0..body.len() {
                for &b in replacements {
                    let mut m = body.clone().into_bytes();
                    m[i] = b;
                    if let Ok(t) = String::from_utf8(m) {
                        check(&t);
                    }
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }

    /// JSON-RPC's by-position `params` (MCP does not use it) names nothing;
    /// serde's derive read it as the struct's fields in order.
    #[test]
    fn params_by_position_name_nothing() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}"#;
        let (p, _) = Peek::parse(body, LATEST).unwrap();
        assert!(p.params.is_some_and(|p| p.name.is_none()));
    }

    #[test]
    fn ids_read_as_a_parser_reads_them() {
        for raw in [
            "0",
            "7",
            "123456789012345678",
            "1234567890123456789",
            "18446744073709551616",
            "-3",
            "1.5",
            "1e3",
            r#""abc""#,
            r#""a\u0062""#,
            "null",
        ] {
            let want: Option<serde_json::Value> = serde_json::from_str(raw).ok();
            assert_eq!(id_value(raw), want, "{raw}");
        }
    }

    #[test]
    fn classify_messages() {
        let v = "2025-11-25";
        let cases: &[(&str, Result<Kind, &str>)] = &[
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                Ok(Kind::Request),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                Ok(Kind::Notification),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","result":{}}"#,
                Ok(Kind::Response),
            ),
            (
                r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#,
                Ok(Kind::Response),
            ),
            (
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                Err("batch_unsupported"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x""#,
                Err("parse_error"),
            ),
            (r#"not json"#, Err("invalid_request")),
            (r#""#, Err("parse_error")),
            (r#"{"id":1,"method":"ping"}"#, Err("invalid_request")),
            (
                r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
                Err("invalid_request"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
                Err("invalid_request"),
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, Err("invalid_request")),
            (r#"{"jsonrpc":"2.0","method":7}"#, Err("invalid_request")),
        ];
        for (body, want) in cases {
            let got = Peek::parse(body.as_bytes(), v)
                .map(|(_, k)| k)
                .map_err(|e| e.reason());
            assert_eq!(&got, want, "{body}");
        }
        let not_utf8 = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}";
        assert_eq!(
            Peek::parse(not_utf8, v).unwrap_err().reason(),
            "parse_error"
        );
    }

    #[test]
    fn peek_borrows_plain_strings() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec\u0068o","uri":null}}"#;
        let (p, _) = Peek::parse(body, LATEST).unwrap();
        assert!(matches!(p.method, Some(Cow::Borrowed("tools/call"))));
        let params = p.params.as_ref().unwrap();
        assert!(matches!(&params.name, Some(Cow::Owned(n)) if n == "echo"));
        assert!(params.uri.is_none());
        let bad = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"name":7}}"#;
        assert_eq!(
            Peek::parse(bad, LATEST).unwrap_err().reason(),
            "invalid_request"
        );
    }

    #[test]
    fn mirrored_headers() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let (p, k) = Peek::parse(body, STATELESS).unwrap();
        let ok = headers(&[("mcp-method", "tools/call"), ("mcp-name", "echo")]);
        assert!(check_mirrored_headers(&ok, &p, k, STATELESS).is_ok());
        for bad in [
            headers(&[("mcp-method", "tools/list"), ("mcp-name", "echo")]),
            headers(&[("mcp-method", "tools/call"), ("mcp-name", "add")]),
            headers(&[("mcp-method", "tools/call")]),
            headers(&[]),
        ] {
            let e = check_mirrored_headers(&bad, &p, k, STATELESS).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        }
        // Whitespace around a value is not part of it; base64 values are decoded.
        let padded = headers(&[
            ("mcp-method", " tools/call "),
            ("mcp-name", "=?base64?ZWNobw==?="),
        ]);
        assert!(check_mirrored_headers(&padded, &p, k, STATELESS).is_ok());
        let broken = headers(&[
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw?="),
        ]);
        assert!(check_mirrored_headers(&broken, &p, k, STATELESS).is_err());
        let upper = headers(&[("mcp-method", "TOOLS/CALL"), ("mcp-name", "echo")]);
        assert!(check_mirrored_headers(&upper, &p, k, STATELESS).is_err());
        // Older revisions: absent is fine, present must still match.
        assert!(check_mirrored_headers(&headers(&[]), &p, k, "2025-11-25").is_ok());
        let wrong = headers(&[("mcp-name", "add")]);
        assert!(check_mirrored_headers(&wrong, &p, k, "2025-11-25").is_err());
    }

    #[test]
    fn mirrored_values_are_plain_or_base64() {
        let cases = [
            ("echo", "echo"),
            ("eu-west-1", "eu-west-1"),
            ("two words", "two words"),
            ("", ""),
            ("SGVsbG8=", "SGVsbG8="),
            ("test://static-text", "test://static-text"),
            // Not safe plain ASCII: sent as base64 of the UTF-8.
            (" Zürich", "=?base64?IFrDvHJpY2g=?="),
            ("Zürich", "=?base64?WsO8cmljaA==?="),
            (" lead", "=?base64?IGxlYWQ=?="),
            ("trail ", "=?base64?dHJhaWwg?="),
            ("tab\there", "=?base64?dGFiCWhlcmU=?="),
            ("line\nbreak", "=?base64?bGluZQpicmVhaw==?="),
            ("del\u{7f}", "=?base64?ZGVsfw==?="),
            (
                "=?base64?SGVsbG8=?=",
                "=?base64?PT9iYXNlNjQ/U0dWc2JHOD0/PQ==?=",
            ),
            ("=?base64?SGVsbG8=", "=?base64?PT9iYXNlNjQ/U0dWc2JHOD0=?="),
        ];
        for (value, sent) in cases {
            let v = mirror_value(value);
            assert_eq!(v.to_str().unwrap(), sent, "mirroring {value:?}");
            // What the receiving end (this gateway's own check) reads back.
            let h = headers(&[("mcp-name", sent)]);
            let read = header_str(&h, Name::MCP_NAME, "Mcp-Name").unwrap().unwrap();
            assert_eq!(read, value, "decoding {sent:?}");
        }
    }

    #[test]
    fn post_headers_and_versions() {
        let good = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("accept", "application/json, text/event-stream"),
        ]);
        assert!(check_post_headers(&good).is_ok());
        let star = headers(&[("content-type", "application/json"), ("accept", "*/*")]);
        assert!(check_post_headers(&star).is_ok());
        let form = headers(&[("content-type", "text/plain"), ("accept", "*/*")]);
        assert_eq!(
            check_post_headers(&form).unwrap_err().reason(),
            "content_type"
        );
        let json_only = headers(&[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ]);
        assert_eq!(
            check_post_headers(&json_only).unwrap_err().reason(),
            "not_acceptable"
        );
        assert_eq!(request_version(&headers(&[])).unwrap(), DEFAULT_VERSION);
        assert_eq!(
            request_version(&headers(&[("mcp-protocol-version", "2025-06-18")])).unwrap(),
            "2025-06-18"
        );
        assert!(request_version(&headers(&[("mcp-protocol-version", "1999-01-01")])).is_err());
    }

    #[test]
    fn accept_is_read_as_media_ranges() {
        let both = ["application/json", "text/event-stream"];
        let admitted: &[&[&str]] = &[
            &["application/json, text/event-stream"],
            &[" Application/JSON ;q=0.9 ,text/event-stream;q=0.1"],
            &["application/json", "text/event-stream"],
            &["application/*, text/*"],
            &["APPLICATION/*, Text/Event-Stream"],
            &["image/png, */*;q=0.1"],
        ];
        for values in admitted {
            let h: Headers = values.iter().map(|v| ("accept", *v)).collect();
            assert!(accepts_all(&h, &both), "{values:?}");
            assert!(accepts(&h, "text/event-stream"), "{values:?}");
        }
        let refused: &[&[&str]] = &[
            &[],
            &["application/json"],
            &["application/jsonx, text/event-stream"],
            &["application/json; text/event-stream"],
            &["*/json, text/event-stream"],
        ];
        for values in refused {
            let h: Headers = values.iter().map(|v| ("accept", *v)).collect();
            assert!(!accepts_all(&h, &both), "{values:?}");
        }
    }
}
