//! The relay's HTTP/1.1 client to upstream MCP servers.
//!
//! Written for the request path rather than taken from a general client:
//! the task that serves a request writes the upstream request and reads the
//! answer on a connection it owns, with no connection task, channel or
//! shared pool lock in between. Idle connections wait in a pool per thread
//! (`listen::Workers` keeps a request on one thread), keyed by scheme and
//! authority.
//!
//! - A request goes out in one write (head and body together when the body
//!   is under 64 KiB).
//! - A response whose `Content-Length` body arrived with its head is
//!   returned whole, and its connection is back in the pool before the
//!   caller sees it. Others stream: `Content-Length`, `chunked` (SSE) or
//!   read-until-close.
//! - The answer's `HeaderMap` holds only the fields the gateway reads of
//!   an upstream's answer (`KEPT`): nothing else of it is relayed, and
//!   building a map of the rest cost more than the rest of the head.
//! - Bounds: the response head (`max_head_bytes`), chunk-size and trailer
//!   lines, connect time; the caller bounds the wait for the head and the
//!   body's size and time.
//! - An idle connection the upstream has closed is noticed before reuse
//!   (the reactor has seen it readable). If a reused connection still fails,
//!   the request is sent once more on a new connection only when the
//!   upstream cannot have acted on it: the write failed, or the request is
//!   replayable (`Outgoing::replay_safe`, or an idempotent method) and no
//!   response byte came back. A `tools/call` is never sent twice.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use rustc_hash::FxHashMap;
use tokio::{
    io::{AsyncRead, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_util::either::Either;

use crate::{
    body::BoxError,
    h1::{BodyError, Chunk, Framing, hop_by_hop, take},
    headers::{Headers, Name},
};

/// Most headers a response head may carry.
const MAX_HEADERS: usize = 128;
/// Bodies up to this size are copied after the head: one write.
const COALESCE_BODY: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// How long a connection may wait in the pool.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream and thread.
    pub max_idle: usize,
    pub max_head_bytes: usize,
}

#[derive(Clone)]
pub struct Client {
    cfg: Arc<ClientConfig>,
    tls: tokio_rustls::TlsConnector,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad upstream URL: {0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("invalid response: {0}")]
    Protocol(String),
}

/// Where a connection goes: scheme and the URL's authority as written.
#[derive(Clone, Copy)]
struct Key<'a> {
    tls: bool,
    authority: &'a str,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections of this thread, by authority: `[plain, tls]`. Newest
/// at the back (taken first, while warm); the oldest, at the front, are
/// dropped once past the idle timeout whenever a connection comes back, so
/// connections the upstream closed do not linger. Authorities come from
/// config, not from clients, so a fast unkeyed hash is safe here.
type Pools = [FxHashMap<Box<str>, VecDeque<Idle>>; 2];

thread_local! {
    static IDLE: RefCell<Pools> = RefCell::new(Default::default());
}

/// Returns a connection whose response was read to its end.
fn release(mut conn: Conn, cfg: &ClientConfig) {
    if !conn.buf.is_empty() {
        // Bytes after the response: the upstream is out of step.
        return;
    }
    conn.reused = true;
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let pool = &mut idle[usize::from(conn.tls)];
        let list = match pool.get_mut(&*conn.authority) {
            Some(list) => list,
            None => pool.entry(conn.authority.clone()).or_default(),
        };
        let now = Instant::now();
        while list
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= cfg.idle_timeout)
        {
            list.pop_front();
        }
        if list.len() < cfg.max_idle {
            list.push_back(Idle { conn, since: now });
        }
    });
}

fn take_idle(key: Key<'_>, cfg: &ClientConfig) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle[usize::from(key.tls)].get_mut(key.authority)?;
        while let Some(Idle { mut conn, since }) = list.pop_back() {
            if since.elapsed() < cfg.idle_timeout && looks_open(&mut conn.io) {
                return Some(conn);
            }
        }
        None
    })
}

/// A request to an upstream. Its header lines are encoded as they are
/// added; the client writes the request line, `host`, framing and body.
/// The URI is borrowed (an upstream's, from config): nothing of it is
/// copied per request.
pub struct Outgoing<'u> {
    method: Method,
    uri: &'u Uri,
    lines: Vec<u8>,
    body: Bytes,
    /// May be sent again after it was written whole (see `Exchange`).
    replayable: bool,
}

impl<'u> Outgoing<'u> {
    pub fn new(method: Method, uri: &'u Uri) -> Self {
        Outgoing {
            replayable: method.is_idempotent(),
            method,
            uri,
            lines: Vec::with_capacity(256),
            body: Bytes::new(),
        }
    }

    /// If `safe`, marks a request that has no effect at the upstream beyond
    /// its answer (a JSON-RPC read in a POST), so it may be sent again on a
    /// new connection if a reused one closes without answering. Requests are
    /// not replayable unless their HTTP method is idempotent.
    ///
    /// By value, so that an `async` caller never borrows its request: a
    /// borrowed local keeps its place in the caller's future across the
    /// send, though it was moved into it.
    pub fn replay_safe(mut self, safe: bool) -> Self {
        self.replayable |= safe;
        self
    }

    /// Adds a header; framing and connection headers are the client's own
    /// and are not taken.
    pub fn header(&mut self, name: &HeaderName, value: &HeaderValue) {
        if !hop_by_hop(name) {
            self.field(name.as_str(), value.as_bytes());
        }
    }

    /// A field the caller vouches for: a lower-case name that is not
    /// hop-by-hop, a value valid in a head (a `Headers` value is).
    pub(crate) fn field(&mut self, name: &str, value: &[u8]) {
        // What keeps a field from ending the line early (CRLF injection)
        // is the caller's promise; tests and debug builds check it.
        debug_assert!(
            !value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "a field value with CR, LF or NUL"
        );
        debug_assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
            "a field name that is not a token"
        );
        self.lines.extend_from_slice(name.as_bytes());
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }

    /// The header lines so far, as they will be written.
    #[cfg(test)]
    pub(crate) fn lines(&self) -> &[u8] {
        &self.lines
    }

    pub fn body(&mut self, body: Bytes) {
        self.body = body;
    }
}

impl Client {
    /// `extra_roots` are trusted for TLS upstreams besides the web roots.
    pub fn new(
        cfg: ClientConfig,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Self {
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let (added, ignored) = roots.add_parsable_certificates(extra_roots.iter().cloned());
        if ignored > 0 {
            tracing::warn!(
                added,
                ignored,
                "upstream_ca_file: some certificates are not usable as roots"
            );
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            cfg: Arc::new(cfg),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        }
    }

    /// Sends `req` (absolute URI) and reads the response head.
    ///
    /// The request is encoded before the returned future is built, so the
    /// future holds the bytes to write, not the request they came from: it
    /// is nested in every caller's future and moved with each of them.
    pub fn send<'a>(
        &'a self,
        req: Outgoing<'a>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ClientError>> + Send + 'a {
        // The encoding's error is answered at once, so that the future holds
        // the `Wire` once (a `wire?` inside it would hold it twice).
        let wire = match Wire::encode(req) {
            Ok(wire) => wire,
            Err(e) => return Either::Left(std::future::ready(Err(e))),
        };
        Either::Right(async move {
            if let Some(conn) = take_idle(wire.key, &self.cfg) {
                match self.exchange(conn, &wire).await {
                    Ok(resp) => return Ok(resp),
                    // The upstream closed the idle connection: send the
                    // request again on a new one, if that cannot make it
                    // act twice.
                    Err(Exchange::Unanswered(_)) => {}
                    Err(Exchange::Failed(e)) => return Err(e),
                }
            }
            // Boxed: connecting is rare, and its future is large.
            let conn = Box::pin(self.connect(wire.key)).await?;
            self.exchange(conn, &wire).await.map_err(|e| match e {
                Exchange::Unanswered(e) | Exchange::Failed(e) => e,
            })
        })
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        wire: &Wire<'_>,
    ) -> Result<Response<UpstreamBody>, Exchange> {
        // A reused connection may have been closed by the upstream just
        // before we wrote (an idle timeout racing our request). The request
        // goes again on a new connection only if the upstream cannot have
        // acted on it: the write failed, or the request is replayable and
        // nothing at all (not even a 1xx) came back. A request written whole
        // and met by silence may have been read and acted on (a tool call
        // with effects): it is not sent twice, as nginx and Go's client do.
        let reused = conn.reused;
        let resend_if = |safe: bool, e: ClientError| {
            if reused && safe {
                Exchange::Unanswered(e)
            } else {
                Exchange::Failed(e)
            }
        };
        let written = async {
            conn.io.write_all(&wire.head).await?;
            if let Some(b) = &wire.rest {
                conn.io.write_all(b).await?;
            }
            conn.io.flush().await
        }
        .await;
        written.map_err(|e| resend_if(true, e.into()))?;
        let mut got_bytes = false;
        let head = loop {
            match parse_head(&mut conn.buf, self.cfg.max_head_bytes) {
                Ok(Some(head)) => {
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    break head;
                }
                Ok(None) => {}
                Err(e) => return Err(Exchange::Failed(e)),
            }
            match conn.read_more().await {
                Ok(0) => {
                    return Err(resend_if(
                        wire.replayable && !got_bytes,
                        ClientError::Closed,
                    ));
                }
                Ok(_) => got_bytes = true,
                Err(e) => return Err(resend_if(wire.replayable && !got_bytes, e.into())),
            }
        };
        let framing = head.framing(wire.head_only).map_err(Exchange::Failed)?;
        let has_te = head.headers.contains(Name::TRANSFER_ENCODING);
        // A switched protocol is not HTTP/1.1 any more (we never ask for
        // it); HTTP/1.0 with Transfer-Encoding is faulty framing (RFC 9112
        // §6.1): neither connection is reused.
        let keep = head.keep_alive
            && head.status != StatusCode::SWITCHING_PROTOCOLS
            && !(has_te && head.version == Version::HTTP_10);
        let mut resp = Response::new(UpstreamBody::empty());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers.to_map(&KEPT);
        let body = match framing {
            // Complete already (an empty body included).
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let data = conn.buf.split_to(n as usize).freeze();
                if keep {
                    release(conn, &self.cfg);
                }
                UpstreamBody::full(data)
            }
            framing => UpstreamBody {
                inner: Inner::Stream(Box::new(Stream {
                    conn,
                    framing,
                    keep,
                    cfg: self.cfg.clone(),
                })),
            },
        };
        *resp.body_mut() = body;
        Ok(resp)
    }

    async fn connect(&self, key: Key<'_>) -> Result<Conn, ClientError> {
        let timeout = self.cfg.connect_timeout;
        let (host, port) = host_port(key)?;
        let work = async {
            let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| ClientError::Connect(format!("resolving {host}: {e}")))?
                    .collect(),
            };
            let mut last = None;
            let mut tcp = None;
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last = Some(format!("{a}: {e}")),
                }
            }
            let tcp = tcp.ok_or_else(|| {
                ClientError::Connect(
                    last.unwrap_or_else(|| format!("{} has no address", key.authority)),
                )
            })?;
            let _ = tcp.set_nodelay(true);
            let io = if key.tls {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| ClientError::Url(format!("{host}: {e}")))?;
                let tls = self.tls.connect(name, tcp).await.map_err(|e| {
                    ClientError::Connect(format!("TLS with {}: {e}", key.authority))
                })?;
                Io::Right(Box::new(tls))
            } else {
                Io::Left(tcp)
            };
            Ok(Conn {
                io,
                buf: BytesMut::with_capacity(READ_CHUNK),
                tls: key.tls,
                authority: key.authority.into(),
                reused: false,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::ConnectTimeout(timeout))?
    }
}

/// A request as it goes on the wire: its head (with the body, when the
/// body is small) and where it goes.
struct Wire<'a> {
    key: Key<'a>,
    head: Vec<u8>,
    /// A body too large to copy after the head, written after it.
    rest: Option<Bytes>,
    head_only: bool,
    replayable: bool,
}

impl<'a> Wire<'a> {
    fn encode(req: Outgoing<'a>) -> Result<Self, ClientError> {
        let key = key_of(req.uri)?;
        let split_body = req.body.len() > COALESCE_BODY;
        // Method, target, host and content-length lines besides `lines`.
        let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
        let head_len = 96 + target + key.authority.len() + req.lines.len();
        let mut head = Vec::with_capacity(head_len + if split_body { 0 } else { req.body.len() });
        encode_head(&req, key, &mut head);
        if !split_body {
            head.extend_from_slice(&req.body);
        }
        Ok(Wire {
            key,
            head,
            head_only: req.method == Method::HEAD,
            replayable: req.replayable,
            rest: split_body.then_some(req.body),
        })
    }
}

enum Exchange {
    /// Failed on a reused connection in a way that makes sending the
    /// request again safe (see `Client::exchange`).
    Unanswered(ClientError),
    Failed(ClientError),
}

fn key_of(uri: &Uri) -> Result<Key<'_>, ClientError> {
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => return Err(ClientError::Url(format!("scheme {other:?}: http or https"))),
    };
    let auth = uri
        .authority()
        .ok_or_else(|| ClientError::Url(format!("{uri}: no host")))?;
    if auth.as_str().contains('@') {
        return Err(ClientError::Url("credentials in the URL authority".into()));
    }
    Ok(Key {
        tls,
        authority: auth.as_str(),
    })
}

/// Host (without IPv6 brackets) and port, the scheme's default if absent.
fn host_port(key: Key<'_>) -> Result<(&str, u16), ClientError> {
    let default = if key.tls { 443 } else { 80 };
    let a = key.authority;
    let (host, port) = match a.rfind(':') {
        Some(i) if !a[i..].contains(']') => {
            let port = a[i + 1..]
                .parse()
                .map_err(|_| ClientError::Url(format!("port of {a:?}")))?;
            (&a[..i], port)
        }
        _ => (a, default),
    };
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

fn encode_head(req: &Outgoing, key: Key<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/")
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(key.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req.lines);
    let has_body = !req.body.is_empty()
        || !matches!(
            req.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
    if has_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(req.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The fields of an answer the gateway reads (`Content-Type` to classify
/// it, `Mcp-Session-Id` of an `initialize`, `Allow` of a 405): the
/// answer's `HeaderMap` holds these only. Framing and connection fields
/// are the client's, read while the head is parsed.
pub const KEPT: [(Name, HeaderName); 3] = [
    (Name::CONTENT_TYPE, http::header::CONTENT_TYPE),
    (Name::MCP_SESSION_ID, crate::mcp::HDR_SESSION),
    (Name::ALLOW, http::header::ALLOW),
];

struct Head {
    status: StatusCode,
    version: Version,
    headers: Headers,
    keep_alive: bool,
    /// `Content-Length`, read while the head was parsed.
    length: Result<Option<u64>, &'static str>,
}

/// Parses the response head at the front of `buf` and takes it out of it.
/// Header values are slices of the head's bytes, not copies.
fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, ClientError> {
    // `Span`s are u32.
    let max = max.min(u32::MAX as usize);
    let mut raw = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut r, buf, &mut raw)
        .map_err(|e| ClientError::Protocol(format!("response head: {e}")))?;
    let len = match parsed {
        httparse::Status::Complete(n) if n <= max => n,
        httparse::Status::Partial if buf.len() <= max => return Ok(None),
        _ => {
            return Err(ClientError::Protocol(format!(
                "response head exceeds {max} bytes"
            )));
        }
    };
    let code = r.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| ClientError::Protocol(format!("status {code}")))?;
    let version = if r.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let spans = crate::h1::spans(buf, r.headers);
    let head = buf.split_to(len).freeze();
    let fields = crate::h1::fields(&head, &spans);
    Ok(Some(Head {
        status,
        version,
        keep_alive: fields.connection.unwrap_or(version == Version::HTTP_11),
        length: fields.length,
        headers: Headers::from_head(head, spans),
    }))
}

impl Head {
    /// RFC 9112 §6.3: how the body ends.
    fn framing(&self, head_request: bool) -> Result<Framing, ClientError> {
        if head_request
            || self.status.is_informational()
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Length(0));
        }
        if let Some(te) = self.headers.get_all(Name::TRANSFER_ENCODING).next_back() {
            let last = te.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
            return if last.eq_ignore_ascii_case(b"chunked") {
                Ok(Framing::Chunked(Chunk::Size))
            } else {
                Ok(Framing::Close)
            };
        }
        let length = self.length.map_err(|e| ClientError::Protocol(e.into()))?;
        Ok(match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        })
    }
}

struct Conn {
    io: Io,
    buf: BytesMut,
    tls: bool,
    authority: Box<str>,
    reused: bool,
}

impl Conn {
    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A plain or TLS connection to an upstream.
type Io = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// False if the idle connection was closed or sent bytes nobody asked for.
/// A read is tried without waiting: it costs nothing unless the reactor has
/// seen the socket readable, and under TLS it lets rustls take records that
/// carry no data (session tickets) and see a `close_notify`.
fn looks_open(io: &mut Io) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    Pin::new(io).poll_read(&mut cx, &mut buf).is_pending()
}

/// An upstream response body: whole, or read from the connection as the
/// caller polls (which also returns the connection to the pool at its end).
pub struct UpstreamBody {
    inner: Inner,
}

enum Inner {
    Full(Option<Bytes>),
    Stream(Box<Stream>),
    Done,
}

struct Stream {
    conn: Conn,
    framing: Framing,
    keep: bool,
    cfg: Arc<ClientConfig>,
}

impl UpstreamBody {
    fn empty() -> Self {
        UpstreamBody { inner: Inner::Done }
    }
    pub(crate) fn full(b: Bytes) -> Self {
        if b.is_empty() {
            return Self::empty();
        }
        UpstreamBody {
            inner: Inner::Full(Some(b)),
        }
    }

    /// The whole body, if it is already here (it came with the head);
    /// otherwise the body back, to be read.
    pub fn into_complete(self) -> Result<Bytes, UpstreamBody> {
        match self.inner {
            Inner::Full(b) => Ok(b.unwrap_or_default()),
            Inner::Done => Ok(Bytes::new()),
            inner => Err(UpstreamBody { inner }),
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut self.inner;
        let s = match this {
            Inner::Done => return Poll::Ready(None),
            Inner::Full(b) => {
                let b = b.take();
                *this = Inner::Done;
                return Poll::Ready(b.map(|b| Ok(Frame::data(b))));
            }
            Inner::Stream(s) => s,
        };
        loop {
            match take(&mut s.framing, &mut s.conn.buf) {
                Err(e) => {
                    *this = Inner::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(data)) => {
                    if s.framing == Framing::Length(0) {
                        finish(this);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if s.framing == Framing::Length(0) => {
                    finish(this);
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            match s.conn.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    *this = Inner::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Ok(0)) => {
                    let framing = s.framing;
                    *this = Inner::Done;
                    return Poll::Ready(match framing {
                        Framing::Close => None,
                        _ => Some(Err(Box::new(BodyError(
                            "upstream closed the connection in the middle of the body".into(),
                        )))),
                    });
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.inner, Inner::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) | Inner::Done => SizeHint::with_exact(0),
            Inner::Stream(s) => match s.framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

/// The body ended cleanly: its connection goes back to the pool.
fn finish(inner: &mut Inner) {
    if let Inner::Stream(s) = std::mem::replace(inner, Inner::Done)
        && s.keep
    {
        release(s.conn, &s.cfg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_framing() {
        fn head(b: &[u8]) -> Result<Option<Head>, ClientError> {
            parse_head(&mut BytesMut::from(b), 1024)
        }
        // The head is taken out of the buffer; the body stays.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nhello"[..]);
        let h = parse_head(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&buf[..], b"hello");
        assert_eq!(
            h.headers.get_named("x-a").and_then(crate::headers::text),
            Some("1")
        );
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(!h.keep_alive);
        assert_eq!(h.framing(false).unwrap(), Framing::Length(5));
        assert_eq!(h.framing(true).unwrap(), Framing::Length(0));
        let h = head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.framing(false).unwrap(), Framing::Chunked(Chunk::Size));
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.framing(false).is_err());
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.framing(false).is_err(), "digits only");
        assert!(head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(head(&[b'x'; 64][..]).is_err());
        let long = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(2000));
        assert!(head(long.as_bytes()).is_err());
    }

    #[test]
    fn heads_are_encoded_for_the_origin() {
        let uri: Uri = "http://up.example/mcp?x=1".parse().unwrap();
        let mut req = Outgoing::new(Method::POST, &uri);
        for (n, v) in [
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
            ("host", "evil"),
        ] {
            req.header(&HeaderName::from_static(n), &HeaderValue::from_static(v));
        }
        req.body(Bytes::from_static(b"{}"));
        let key = key_of(req.uri).unwrap();
        assert_eq!(host_port(key).unwrap(), ("up.example", 80));
        let mut out = Vec::new();
        encode_head(&req, key, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /mcp?x=1 HTTP/1.1\r\nhost: up.example\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
        );
        let uri: Uri = "https://[::1]:8443/mcp".parse().unwrap();
        let get = Outgoing::new(Method::GET, &uri);
        let key = key_of(get.uri).unwrap();
        assert_eq!(host_port(key).unwrap(), ("::1", 8443));
        let mut out = Vec::new();
        encode_head(&get, key, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /mcp HTTP/1.1\r\nhost: [::1]:8443\r\n\r\n"
        );
        assert!(key_of(&"ftp://x/".parse().unwrap()).is_err());
        let big: Uri = "http://up:99999/".parse().unwrap();
        assert!(host_port(key_of(&big).unwrap()).is_err());
        assert!(key_of(&"http://u:p@x/".parse().unwrap()).is_err());
    }
}
