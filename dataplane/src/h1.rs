//! HTTP/1.1 on both sides of the gateway, without I/O: message framing
//! (RFC 9112 §6), request heads parsed with `httparse`, response heads
//! encoded. `client` reads upstream answers with it; `h1::server` serves
//! agents with it.
//!
//! Request framing is strict where laxness lets two parsers disagree about
//! where a message ends (request smuggling): a request with both
//! `Transfer-Encoding` and `Content-Length`, with a transfer coding other
//! than exactly `chunked`, with `Transfer-Encoding` under HTTP/1.0, or with
//! `Content-Length` values that are not all the same digits is refused,
//! and the connection is closed after the refusal.

pub mod server;

use std::{cell::RefCell, mem::MaybeUninit, time::SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri, Version, header};

use crate::{
    body::BoxError,
    headers::{Head, Headers, Name, Span, Spans},
};

/// Longest chunk-size or trailer line.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header fields a request head may carry (431 beyond).
pub const MAX_REQUEST_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes (responses only; no reuse).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// The next data from what is buffered: `Ok(Some)` data, `Ok(None)` need
/// more bytes, or the end (`framing` becomes `Length(0)`).
pub fn take(framing: &mut Framing, buf: &mut BytesMut) -> Result<Option<Bytes>, BoxError> {
    loop {
        match *framing {
            Framing::Length(0) => return Ok(None),
            Framing::Length(rem) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (buf.len() as u64).min(rem) as usize;
                *framing = Framing::Length(rem - n as u64);
                return Ok(Some(buf.split_to(n).freeze()));
            }
            Framing::Close => {
                return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Size) if buf.is_empty() => return Ok(None),
            Framing::Chunked(Chunk::Size) if !buf[0].is_ascii_hexdigit() => {
                return Err(Box::new(BodyError("invalid chunk size".into())));
            }
            Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    buf.advance(used);
                    *framing = Framing::Chunked(Chunk::Trailers);
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    *framing = Framing::Chunked(Chunk::Data(size));
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                    return Err(Box::new(BodyError("chunk-size line too long".into())));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(Box::new(BodyError("invalid chunk size".into()))),
            },
            Framing::Chunked(Chunk::Data(rem)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (buf.len() as u64).min(rem) as usize;
                *framing = Framing::Chunked(if rem == n as u64 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rem - n as u64)
                });
                return Ok(Some(buf.split_to(n).freeze()));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Box::new(BodyError(
                        "chunk data not followed by CRLF".into(),
                    )));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_LINE {
                        return Err(Box::new(BodyError("trailer line too long".into())));
                    }
                    return Ok(None);
                };
                buf.advance(end + 2);
                if end == 0 {
                    *framing = Framing::Length(0);
                }
            }
        }
    }
}

pub fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Framing and connection headers: each side writes its own, never
/// relays the other's.
pub fn hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    name == HOST
        || name == CONTENT_LENGTH
        || name == TRANSFER_ENCODING
        || name == CONNECTION
        || name == TE
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// Adds a `Content-Length` value to what earlier ones said: every value
/// must be the same digits (RFC 9110 §8.6; a list, a sign or spaces inside
/// are refused).
fn add_length(length: &mut Result<Option<u64>, &'static str>, value: &[u8]) {
    let Ok(seen) = *length else { return };
    let digits = value.trim_ascii();
    let n = (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten();
    *length = match (n, seen) {
        (None, _) => Err("invalid content-length"),
        (Some(n), Some(l)) if l != n => Err("conflicting content-length"),
        (Some(n), _) => Ok(Some(n)),
    };
}

/// Where the fields parsed out of `head` sit in it.
pub(crate) fn spans(head: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
    let at = |s: &[u8]| {
        (
            (s.as_ptr() as usize - head.as_ptr() as usize) as u32,
            s.len() as u32,
        )
    };
    fields
        .iter()
        .map(|h| Span {
            name: at(h.name.as_bytes()),
            value: at(h.value),
            id: Name::of(h.name.as_bytes()),
        })
        .collect()
}

/// What both sides read of a head's fields for framing and the
/// connection, gathered in one pass so that no one looks them up again.
#[derive(Debug)]
pub(crate) struct Fields {
    /// The last `Connection` that says `close` (false) or `keep-alive`.
    pub connection: Option<bool>,
    pub expect_continue: bool,
    /// A `Transfer-Encoding` field is present.
    pub transfer_encoding: bool,
    /// `Content-Length`: `None` when absent, or why its values are refused.
    pub length: Result<Option<u64>, &'static str>,
}

/// Reads the framing and connection fields of `head` at `spans`.
pub(crate) fn fields(head: &[u8], spans: &[Span]) -> Fields {
    let mut f = Fields {
        connection: None,
        expect_continue: false,
        transfer_encoding: false,
        length: Ok(None),
    };
    let at = |(at, len): (u32, u32)| &head[at as usize..(at + len) as usize];
    for span in spans {
        match span.id {
            Name::CONTENT_LENGTH => add_length(&mut f.length, at(span.value)),
            Name::TRANSFER_ENCODING => f.transfer_encoding = true,
            Name::CONNECTION => {
                let v = at(span.value);
                if has_token(v, b"close") {
                    f.connection = Some(false);
                } else if has_token(v, b"keep-alive") {
                    f.connection = Some(true);
                }
            }
            Name::EXPECT => {
                f.expect_continue |= at(span.value).eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
    f
}

/// A request head, taken out of the connection's buffer.
#[derive(Debug)]
pub struct RequestHead {
    pub head: Head,
    pub framing: Framing,
    /// The client allows the connection to serve another request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Why a request head is refused; the connection closes after the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Over the byte limit or `MAX_REQUEST_HEADERS` (431).
    TooLarge,
    /// Not HTTP/1.x as RFC 9112 writes it (400).
    Malformed(String),
    /// A transfer coding the gateway does not decode (501).
    Coding(String),
}

/// Parses the request head at the front of `buf` (`Ok(None)`: not all of
/// it is here yet) and takes it out. Header values are slices of the
/// head's bytes, not copies.
pub fn parse_request(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    // `Span`s are u32.
    let max = max.min(u32::MAX as usize);
    let mut raw = [const { MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
    let mut r = httparse::Request::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut r, buf, &mut raw);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(format!("request head: {e}"))),
    };
    let method = Method::from_bytes(r.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("method".into()))?;
    let version = match r.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let path = r.path.unwrap_or("");
    let path_at = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_at = path_at..path_at + path.len();
    let spans = spans(buf, r.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at))
        .map_err(|_| HeadError::Malformed("request target".into()))?;
    let fields = fields(&head, &spans);
    let headers = Headers::from_head(head, spans);
    let framing = request_framing(&fields, &headers, version)?;
    let keep_alive = fields.connection.unwrap_or(version == Version::HTTP_11);
    let expect_continue = fields.expect_continue && version == Version::HTTP_11;
    Ok(Some(RequestHead {
        head: Head {
            method,
            uri,
            version,
            headers,
        },
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// RFC 9112 §6.3 for requests: chunked, a length, or no body.
fn request_framing(
    fields: &Fields,
    headers: &Headers,
    version: Version,
) -> Result<Framing, HeadError> {
    if fields.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed(
                "transfer-encoding in an HTTP/1.0 request".into(),
            ));
        }
        if headers.contains(Name::CONTENT_LENGTH) {
            return Err(HeadError::Malformed(
                "both transfer-encoding and content-length".into(),
            ));
        }
        let mut tokens = headers
            .get_all(Name::TRANSFER_ENCODING)
            .flat_map(|v| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii);
        return match (tokens.next(), tokens.next()) {
            (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => {
                Ok(Framing::Chunked(Chunk::Size))
            }
            _ => Err(HeadError::Coding(
                "only transfer-encoding: chunked is supported".into(),
            )),
        };
    }
    match fields.length {
        Ok(n) => Ok(Framing::Length(n.unwrap_or(0))),
        Err(e) => Err(HeadError::Malformed(e.into())),
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length` (also for a HEAD answer, which sends no body).
    Length(u64),
    Chunked,
    /// Until the connection closes: an HTTP/1.0 client and a body of
    /// unknown length.
    Close,
    /// Neither a body nor a length: 1xx, 204, 304, or HEAD with no length.
    None,
}

/// Writes a response head into `out`: the status line, the handler's
/// headers but for framing and connection ones (the gateway's to write),
/// `Date`, then framing and `Connection`.
pub fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: BodyFraming,
    keep_alive: bool,
    version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if hop_by_hop(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Close | BodyFraming::None => {}
    }
    if !keep_alive || framing == BodyFraming::Close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value, formatted once a second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                d.1.copy_from_slice(s.as_bytes());
                d.0 = secs;
            }
        }
        out.extend_from_slice(&d.1);
    });
}

/// The framing of a chunk of data: its size line, or the last chunk.
pub fn chunk_head(out: &mut Vec<u8>, len: usize) {
    let _ = std::io::Write::write_fmt(out, format_args!("{len:x}\r\n"));
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(framing: &mut Framing, bytes: &[u8]) -> Result<Vec<u8>, BoxError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(b) = take(framing, &mut buf)? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[test]
    fn chunked_bodies_decode() {
        let mut f = Framing::Chunked(Chunk::Size);
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(drain(&mut f, body).unwrap(), b"hello, world");
        assert_eq!(f, Framing::Length(0));
    }

    #[test]
    fn partial_chunks_wait_for_more() {
        let mut f = Framing::Chunked(Chunk::Size);
        assert_eq!(drain(&mut f, b"a\r\n0123").unwrap(), b"0123");
        assert_eq!(f, Framing::Chunked(Chunk::Data(6)));
    }

    #[test]
    fn bad_chunks_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"2\r\nabXY",
            &[b'1'; MAX_LINE + 10],
            // No digits: must not read as the last chunk.
            b"5\r\nhello\r\n\r\n",
            b";x\r\n",
        ] {
            assert!(drain(&mut Framing::Chunked(Chunk::Size), bad).is_err());
        }
    }

    #[test]
    fn lengths_stop_at_the_end() {
        let mut f = Framing::Length(3);
        assert_eq!(drain(&mut f, b"abcdef").unwrap(), b"abc");
        assert_eq!(f, Framing::Length(0));
    }

    fn request(b: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(b), 1024)
    }

    #[test]
    fn request_heads_parse_with_framing() {
        let mut buf = BytesMut::from(
            &b"POST /mcp/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhelloGET"
                [..],
        );
        let h = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&buf[..], b"helloGET", "the body and what follows stay");
        assert_eq!(h.head.method, Method::POST);
        assert_eq!(h.head.uri.path(), "/mcp/a");
        assert_eq!(h.head.uri.query(), Some("x=1"));
        assert_eq!(h.head.headers.get_named("x-a"), Some(&b"1"[..]));
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive && !h.expect_continue);

        let h = request(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        let h = request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = request(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(h.expect_continue);
        assert!(
            request(b"POST / HTTP/1.1\r\nHost: h\r\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn field_names_are_found_in_any_case() {
        let h = request(
            b"POST /mcp HTTP/1.1\r\nhost: h\r\nMCP-Session-Id: s\r\nContent-TYPE: application/json\r\n\
              X-Api-Key: k\r\nmcp-protocol-version: v\r\nX-Custom-Thing: c\r\nConnection: Close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let m = &h.head.headers;
        assert_eq!(m.len(), 7);
        for (name, value) in [
            ("host", "h"),
            ("mcp-session-id", "s"),
            ("content-type", "application/json"),
            ("x-api-key", "k"),
            ("mcp-protocol-version", "v"),
            ("x-custom-thing", "c"),
        ] {
            assert_eq!(m.get_named(name), Some(value.as_bytes()), "{name}");
        }
        // The names the gateway reads are interned whatever their case.
        assert_eq!(m.get_str(Name::MCP_SESSION_ID), Some("s"));
        assert_eq!(m.get_str(Name::CONTENT_TYPE), Some("application/json"));
        assert_eq!(m.get_str(Name::X_API_KEY), Some("k"));
        assert!(
            m.iter()
                .any(|(id, raw, _)| id == Name::OTHER && raw == b"X-Custom-Thing")
        );
        assert!(!h.keep_alive, "Connection: Close is read whatever its case");
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn bad_fields_name_the_field() {
        for (head, says) in [
            (
                &b"GET / HTTP/1.1\r\nhost: h\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n"[..],
                "conflicting",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                "invalid content-length",
            ),
        ] {
            match request(head) {
                Err(HeadError::Malformed(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let malformed = [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"[..],
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"POST / HTTP/1.1\r\nBad Name: 1\r\n\r\n",
            b"POST  / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for bad in malformed {
            assert!(
                matches!(request(bad), Err(HeadError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                request(bad)
            );
        }
        for coding in [
            "gzip",
            "gzip, chunked",
            "chunked, chunked",
            "chunked\r\nTransfer-Encoding: chunked",
        ] {
            let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert!(
                matches!(request(head.as_bytes()), Err(HeadError::Coding(_))),
                "{coding}"
            );
        }
        // Same-valued repeats are one length.
        let h = request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
    }

    #[test]
    fn request_heads_are_bounded() {
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(request(long.as_bytes()).unwrap_err(), HeadError::TooLarge);
        // Unfinished and already over the limit: no need to wait for more.
        assert_eq!(
            request(&long.as_bytes()[..1500]).unwrap_err(),
            HeadError::TooLarge
        );
        let many: String = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("h{i}: 1\r\n"))
            .collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(&mut BytesMut::from(head.as_bytes()), 1 << 20).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn response_heads_carry_our_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert("content-length", http::HeaderValue::from_static("999"));
        headers.insert("connection", http::HeaderValue::from_static("keep-alive"));
        headers.insert(
            "transfer-encoding",
            http::HeaderValue::from_static("chunked"),
        );
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &headers,
            BodyFraming::Length(2),
            true,
            Version::HTTP_11,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: "),
            "{s}"
        );
        assert!(s.ends_with("GMT\r\ncontent-length: 2\r\n\r\n"), "{s}");
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            BodyFraming::Chunked,
            false,
            Version::HTTP_11,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(
            s.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{s}"
        );
        let mut out = Vec::new();
        encode_response_head(
            &mut out,
            StatusCode::OK,
            &HeaderMap::new(),
            BodyFraming::Length(0),
            true,
            Version::HTTP_10,
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("content-length: 0\r\nconnection: keep-alive\r\n\r\n")
        );
    }
}
