//! The gateway's HTTP/1.1 server: one loop per connection, on the worker
//! thread that owns it. It reads a request head (`h1::parse_request`),
//! hands the request to the gateway with its body (whole when it came with
//! the head, as an MCP request almost always does; otherwise fed from the
//! socket as the gateway reads it), and writes the answer: the head and
//! whatever of the body is ready in one write, a streamed body (SSE) chunk
//! by chunk as it comes. Pipelined requests are answered in order.
//!
//! Why not hyper's server: on the relay's path it cost about 15k of the
//! gateway's 41k instructions per call (callgrind), 6.7k of them building
//! the request's `HeaderMap`, the rest its dispatcher, buffers and timer.
//! With this loop the gateway adds 44-47 µs at concurrency 1 where it
//! added 52-53 with hyper's (same run, docs/benchmarks.md); saturation
//! throughput did not move (+1 %).
//! HTTP/2 (h2c by prior knowledge, h2 by ALPN) stays with hyper: a
//! connection that opens with the HTTP/2 preface is handed back
//! (`Ended::H2`) with what was read of it.
//!
//! Bounds: the head (`max_header_bytes` and `MAX_REQUEST_HEADERS`: 431);
//! the time from a head's first byte to its end (`header_read_timeout`: the
//! connection is closed without an answer, as a slowloris deserves); the
//! body, which the gateway reads under `max_body_bytes` and
//! `body_read_timeout`; bytes read ahead while an answer streams (at most
//! `max_header_bytes`); a write the client does not take (`send_timeout`:
//! the connection is closed). A connection whose request body was not read to its
//! end is closed after the answer: the rest would read as the next request.
//! So is one whose client closes: an EOF while an answer streams ends it.

use std::{
    future::Future,
    pin::{Pin, pin},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::{BodyError, BodyFraming, Framing, HeadError, RequestHead};
use crate::{
    body::{Body, BoxError},
    error::GatewayError,
    headers::Head,
};

const READ_CHUNK: usize = 16 * 1024;
/// Body data up to this size is copied behind the head (or the chunk's
/// size line): one write.
const COALESCE_BODY: usize = 64 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_head: usize,
    pub header_read_timeout: Duration,
    /// Longest a write to the client may wait (the client reads nothing):
    /// the connection is then closed.
    pub send_timeout: Duration,
    /// A connection that opens with the HTTP/2 preface is handed back.
    pub sniff_h2: bool,
}

/// How a connection's loop ended.
#[derive(Debug)]
pub enum Ended {
    Closed,
    /// The client speaks HTTP/2: the bytes read so far, to be read again.
    H2(Bytes),
}

/// Serves HTTP/1.1 requests on `io` with `svc` until the client closes,
/// an answer closes the connection, or `stop` (drain, idle) resolves: at
/// once if no request is under way, else after the answer under way
/// (which then says `Connection: close`).
pub async fn serve<IO, S, F, Fut>(
    io: &mut IO,
    s: &Settings,
    mut stop: Pin<&mut S>,
    mut svc: F,
) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Future<Output = ()>,
    F: FnMut(Head, RequestBody) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    let mut sniff = s.sniff_h2;
    loop {
        let head = match read_head(io, &mut buf, s, &mut sniff, stop.as_mut()).await {
            Next::Request(h) => h,
            Next::H2 => return Ended::H2(buf.freeze()),
            Next::Closed => return Ended::Closed,
            Next::Refused(e) => {
                let resp = crate::body::error_response(&refusal(e), None, false);
                let answer = Answer {
                    version: Version::HTTP_11,
                    keep: false,
                    head_only: false,
                };
                let _ = write_response(io, &mut out, &mut buf, resp, answer, s).await;
                close(io, s.send_timeout).await;
                return Ended::Closed;
            }
        };
        let RequestHead {
            head,
            mut framing,
            keep_alive,
            expect_continue,
        } = head;
        let version = head.version;
        let head_only = head.method == Method::HEAD;
        let (body, feed) = match framing {
            Framing::Length(n) if buf.len() as u64 >= n => {
                framing = Framing::Length(0);
                (RequestBody::full(buf.split_to(n as usize).freeze()), None)
            }
            Framing::Length(n) => {
                let (tx, rx) = mpsc::channel(1);
                (RequestBody::fed(rx, Some(n)), Some(tx))
            }
            Framing::Chunked(_) | Framing::Close => {
                let (tx, rx) = mpsc::channel(1);
                (RequestBody::fed(rx, None), Some(tx))
            }
        };
        if expect_continue
            && feed.is_some()
            && !send(io, b"HTTP/1.1 100 Continue\r\n\r\n", s.send_timeout).await
        {
            return Ended::Closed;
        }
        let answer = svc(head, body);
        let resp = match feed {
            None => answer.await,
            Some(tx) => {
                let mut answer = pin!(answer);
                let mut feeding = pin!(feed_body(io, &mut buf, &mut framing, tx));
                let mut fed = false;
                loop {
                    tokio::select! {
                        biased;
                        r = &mut answer => break r,
                        () = &mut feeding, if !fed => fed = true,
                    }
                }
            }
        };
        let body_read = framing == Framing::Length(0);
        let stopping = stop.as_mut().now_or_never().is_some();
        let keep = keep_alive && body_read && !stopping;
        let answer = Answer {
            version,
            keep,
            head_only,
        };
        if !write_response(io, &mut out, &mut buf, resp, answer, s).await {
            close(io, s.send_timeout).await;
            return Ended::Closed;
        }
    }
}

/// Not boxed: one per request, moved once.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(RequestHead),
    H2,
    Closed,
    Refused(HeadError),
}

fn refusal(e: HeadError) -> GatewayError {
    match e {
        HeadError::TooLarge => GatewayError::HeadTooLarge,
        HeadError::Malformed(why) => GatewayError::BadHttp(why),
        HeadError::Coding(why) => GatewayError::UnsupportedCoding(why),
    }
}

/// The next request head. `stop` ends the wait only while no byte of a
/// head has arrived; from the first byte the head has
/// `header_read_timeout` to arrive whole.
async fn read_head<IO, S>(
    io: &mut IO,
    buf: &mut BytesMut,
    s: &Settings,
    sniff: &mut bool,
    mut stop: Pin<&mut S>,
) -> Next
where
    IO: AsyncRead + Unpin,
    S: Future<Output = ()>,
{
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        if *sniff && (buf.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(buf)) {
            if buf.starts_with(H2_PREFACE) {
                return Next::H2;
            }
            *sniff = false;
        }
        if !*sniff && !buf.is_empty() {
            match super::parse_request(buf, s.max_head) {
                Ok(Some(h)) => return Next::Request(h),
                Ok(None) => {}
                Err(e) => return Next::Refused(e),
            }
        }
        let waiting = buf.is_empty();
        if !waiting && deadline.is_none() {
            deadline = Some(Box::pin(tokio::time::sleep(s.header_read_timeout)));
        }
        buf.reserve(READ_CHUNK);
        let late = async {
            match deadline.as_mut() {
                Some(d) => d.await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            biased;
            r = io.read_buf(buf) => r,
            () = stop.as_mut(), if waiting => return Next::Closed,
            () = late => {
                tracing::debug!("request head not complete within header_read_timeout: closing");
                return Next::Closed;
            }
        };
        match read {
            Ok(0) | Err(_) => return Next::Closed,
            Ok(_) => {}
        }
    }
}

/// Feeds the request body from `buf` and the socket to the gateway, as
/// fast as it reads (the channel holds one piece). Ends at the body's end
/// (`framing` is then `Length(0)`), on a framing error or an early close
/// (the gateway sees the error), or when the gateway stops reading.
async fn feed_body<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    framing: &mut Framing,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
) {
    loop {
        match super::take(framing, buf) {
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Ok(Some(data)) => {
                if tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
            Ok(None) if *framing == Framing::Length(0) => return,
            Ok(None) => {
                buf.reserve(READ_CHUNK);
                let err: BoxError = match io.read_buf(buf).await {
                    Ok(0) => Box::new(BodyError(
                        "the client closed the connection in the middle of the body".into(),
                    )),
                    Err(e) => Box::new(e),
                    Ok(_) => continue,
                };
                let _ = tx.send(Err(err)).await;
                return;
            }
        }
    }
}

/// How to answer a request.
#[derive(Clone, Copy)]
struct Answer {
    version: Version,
    /// The connection may serve another request after this one.
    keep: bool,
    /// HEAD: the length a GET would have, and no body.
    head_only: bool,
}

/// Writes `resp`; true if the connection may serve another request.
/// While the body streams, the socket is read too (at most `max_head`
/// bytes, kept in `buf` for the next request), so that a client that
/// leaves ends the stream. A write that waits `send_timeout` fails.
async fn write_response<IO>(
    io: &mut IO,
    out: &mut Vec<u8>,
    buf: &mut BytesMut,
    resp: Response<Body>,
    Answer {
        version,
        keep,
        head_only,
    }: Answer,
    s: &Settings,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stall = s.send_timeout;
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match body.size_hint().exact() {
        _ if no_content => BodyFraming::None,
        Some(n) => BodyFraming::Length(n),
        None if head_only => BodyFraming::None,
        None if version == Version::HTTP_11 => BodyFraming::Chunked,
        None => BodyFraming::Close,
    };
    let keep = keep && framing != BodyFraming::Close;
    out.clear();
    super::encode_response_head(out, status, &parts.headers, framing, keep, version);
    if no_content || head_only {
        return write_out(io, out, stall).await && keep;
    }
    let mut left = match framing {
        BodyFraming::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // What the body has ready goes into one write with the head.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() && !write_out(io, out, stall).await {
                    return false;
                }
                match next_frame(&mut body, io, buf, s.max_head).await {
                    Some(f) => f,
                    None => return false,
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                // Too late for a status: closing tells the client.
                tracing::debug!("response body failed: {e}");
                return false;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        match framing {
            BodyFraming::Length(_) => {
                if data.len() as u64 > left {
                    tracing::warn!("response body longer than its length: closing");
                    return false;
                }
                left -= data.len() as u64;
                if !put(io, out, &data, stall).await {
                    return false;
                }
            }
            BodyFraming::Chunked => {
                super::chunk_head(out, data.len());
                if !put(io, out, &data, stall).await {
                    return false;
                }
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Close | BodyFraming::None => {
                if !put(io, out, &data, stall).await {
                    return false;
                }
            }
        }
    }
    match framing {
        BodyFraming::Length(_) if left != 0 => {
            tracing::warn!("response body shorter than its length: closing");
            let _ = write_out(io, out, stall).await;
            return false;
        }
        BodyFraming::Chunked => out.extend_from_slice(super::LAST_CHUNK),
        _ => {}
    }
    write_out(io, out, stall).await && keep
}

/// The next frame of a body that has none ready, reading the socket
/// meanwhile: `None` if the client closed it.
async fn next_frame<IO: AsyncRead + Unpin>(
    body: &mut Body,
    io: &mut IO,
    buf: &mut BytesMut,
    max_ahead: usize,
) -> Option<Option<Result<Frame<Bytes>, BoxError>>> {
    loop {
        let room = buf.len() < max_ahead;
        if room {
            buf.reserve(1024);
        }
        tokio::select! {
            biased;
            f = body.frame() => return Some(f),
            r = io.read_buf(buf), if room => match r {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// Appends `data` to `out`, or writes both when it is large.
async fn put<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    data: &[u8],
    stall: Duration,
) -> bool {
    if data.len() <= COALESCE_BODY {
        out.extend_from_slice(data);
        return true;
    }
    write_out(io, out, stall).await && send(io, data, stall).await
}

async fn write_out<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    stall: Duration,
) -> bool {
    let ok = send(io, out, stall).await;
    out.clear();
    ok
}

/// Shuts the connection down, within `stall`: over TLS that writes
/// close_notify and whatever records are still buffered, which a client
/// that reads nothing would never take.
async fn close<IO: AsyncWrite + Unpin>(io: &mut IO, stall: Duration) {
    let _ = unless_stalled(io.shutdown(), stall).await;
}

/// Writes and flushes `data`; false if the client is gone or a write
/// waits `stall` (a client that reads nothing, or too slowly to take a
/// write's worth in that time).
async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, mut data: &[u8], stall: Duration) -> bool {
    while !data.is_empty() {
        match unless_stalled(io.write(data), stall).await {
            Some(Ok(n)) if n > 0 => data = &data[n..],
            Some(_) => return false,
            None => return stalled(),
        }
    }
    match unless_stalled(io.flush(), stall).await {
        Some(r) => r.is_ok(),
        None => stalled(),
    }
}

fn stalled() -> bool {
    tracing::debug!("a write to the client waited send_timeout: closing");
    false
}

/// `op`'s output, or `None` if it waits `stall`. An operation that is
/// ready at once, as nearly every write is, arms no timer. (A write or
/// flush that is not ready has taken nothing, for TCP as for TLS: polling
/// it once more with the timer is the same operation.)
async fn unless_stalled<F: Future>(op: F, stall: Duration) -> Option<F::Output> {
    let mut op = pin!(op);
    if let Some(out) = op.as_mut().now_or_never() {
        return Some(out);
    }
    tokio::time::timeout(stall, op).await.ok()
}

/// A request's body: whole, or fed by the connection's loop.
pub struct RequestBody(Inner);

enum Inner {
    Full(Option<Bytes>),
    Fed {
        rx: mpsc::Receiver<Result<Bytes, BoxError>>,
        len: Option<u64>,
        done: bool,
    },
}

impl RequestBody {
    fn full(b: Bytes) -> Self {
        RequestBody(Inner::Full((!b.is_empty()).then_some(b)))
    }

    fn fed(rx: mpsc::Receiver<Result<Bytes, BoxError>>, len: Option<u64>) -> Self {
        RequestBody(Inner::Fed {
            rx,
            len,
            done: false,
        })
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Fed { rx, len, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(None) => {
                        *done = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(r)) => {
                        // The length is of what was left to come.
                        *len = None;
                        *done = r.is_err();
                        Poll::Ready(Some(r.map(Frame::data)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(b) => b.is_none(),
            Inner::Fed { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Fed { len: Some(n), .. } => SizeHint::with_exact(*n),
            Inner::Fed { len: None, .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    use super::*;

    fn settings() -> Settings {
        Settings {
            max_head: 1024,
            header_read_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(5),
            sniff_h2: true,
        }
    }

    /// Answers with the method, path and body it read; `/stream` answers
    /// with a body of unknown length, fed by the test through `feed`.
    async fn echo(
        parts: Head,
        body: RequestBody,
        feed: Option<mpsc::Receiver<Result<Frame<Bytes>, BoxError>>>,
    ) -> Response<Body> {
        if parts.uri.path() == "/stream" {
            let rx = feed.expect("a feed for /stream");
            return Response::new(crate::body::ChannelBody::new(rx).boxed());
        }
        if parts.uri.path() == "/ignore" {
            return Response::new(crate::body::full("ignored"));
        }
        let body = match crate::body::read_whole(body, 1 << 20, Duration::from_secs(5)).await {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => "body failed".into(),
        };
        Response::new(crate::body::full(format!(
            "{} {} {body}",
            parts.method,
            parts.uri.path()
        )))
    }

    /// Runs `serve` over one end of a duplex pipe with `echo`.
    fn start(
        s: Settings,
        feed: Option<mpsc::Receiver<Result<Frame<Bytes>, BoxError>>>,
        stop: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> (DuplexStream, tokio::task::JoinHandle<Ended>) {
        let (client, mut server) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut feed = feed;
            let stop = pin!(async move {
                match stop {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            });
            serve(&mut server, &s, stop, |head, body| {
                echo(head, body, feed.take())
            })
            .await
        });
        (client, task)
    }

    /// Reads until `want` responses are complete (each ends with its
    /// body, whose length is given) or the pipe closes.
    async fn read_all(c: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn read_some(c: &mut DuplexStream, until: &str) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(until) {
            let n = c.read(&mut b).await.unwrap();
            assert!(
                n > 0,
                "closed before {until:?}: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (mut c, task) = start(settings(), None, None);
        c.write_all(
            b"POST /a HTTP/1.1\r\ncontent-length: 3\r\n\r\nonePOST /b HTTP/1.1\r\ncontent-length: 3\r\n\r\ntwoGET /c HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let all = read_all(&mut c).await;
        let a = all.find("POST /a one").expect(&all);
        let b = all.find("POST /b two").expect(&all);
        let last = all.find("GET /c ").expect(&all);
        assert!(a < b && b < last, "{all}");
        assert_eq!(all.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{all}");
        assert!(all.contains("content-length: 11\r\n"), "{all}");
        assert!(all.ends_with("connection: close\r\n\r\nGET /c "), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn bodies_that_come_later_are_fed_as_read() {
        let (mut c, _task) = start(settings(), None, None);
        c.write_all(b"POST /late HTTP/1.1\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        c.write_all(b"world").await.unwrap();
        read_some(&mut c, "POST /late helloworld").await;
        // Chunked, in pieces, with 100-continue.
        c.write_all(
            b"POST /chunked HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        read_some(&mut c, "HTTP/1.1 100 Continue\r\n\r\n").await;
        c.write_all(b"3\r\nabc\r\n4;x=y\r\ndefg\r").await.unwrap();
        tokio::task::yield_now().await;
        c.write_all(b"\n0\r\ntrailer: 1\r\n\r\n").await.unwrap();
        read_some(&mut c, "POST /chunked abcdefg").await;
        // Still serving.
        c.write_all(b"GET /again HTTP/1.1\r\n\r\n").await.unwrap();
        read_some(&mut c, "GET /again ").await;
    }

    #[tokio::test]
    async fn an_unread_body_closes_the_connection() {
        let (mut c, task) = start(settings(), None, None);
        c.write_all(b"POST /ignore HTTP/1.1\r\ncontent-length: 100\r\n\r\npart")
            .await
            .unwrap();
        let all = read_all(&mut c).await;
        assert!(all.contains("connection: close\r\n"), "{all}");
        assert!(all.ends_with("ignored"), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn streams_are_chunked_and_end_when_the_client_leaves() {
        let (tx, rx) = mpsc::channel(4);
        let (mut c, task) = start(settings(), Some(rx), None);
        c.write_all(b"GET /stream HTTP/1.1\r\n\r\n").await.unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
            .await
            .unwrap();
        let got = read_some(&mut c, "data: 1\n\n\r\n").await;
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n9\r\ndata: 1\n\n\r\n"), "{got}");
        drop(c);
        // The stream ends though the body never does.
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        assert!(tx.is_closed(), "the body was dropped");
    }

    #[tokio::test]
    async fn a_finished_stream_ends_with_the_last_chunk() {
        let (tx, rx) = mpsc::channel(4);
        let (mut c, _task) = start(settings(), Some(rx), None);
        c.write_all(b"GET /stream HTTP/1.1\r\n\r\n").await.unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        drop(tx);
        read_some(&mut c, "1\r\nx\r\n0\r\n\r\n").await;
        // HTTP/1.0 has no chunks: the body runs to the close.
        let (tx, rx) = mpsc::channel(4);
        let (mut c, task) = start(settings(), Some(rx), None);
        c.write_all(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from_static(b"y"))))
            .await
            .unwrap();
        drop(tx);
        let all = read_all(&mut c).await;
        assert!(all.contains("connection: close\r\n\r\ny"), "{all}");
        assert!(!all.contains("chunked"), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    #[tokio::test]
    async fn head_answers_carry_the_length_and_no_body() {
        let (mut c, _task) = start(settings(), None, None);
        c.write_all(b"HEAD /h HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let got = read_some(&mut c, "GET /next ").await;
        assert!(
            got.contains("content-length: 8\r\n\r\nHTTP/1.1 200 OK"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn the_http2_preface_is_handed_back() {
        let (mut c, task) = start(settings(), None, None);
        c.write_all(&H2_PREFACE[..10]).await.unwrap();
        tokio::task::yield_now().await;
        c.write_all(&H2_PREFACE[10..]).await.unwrap();
        c.write_all(b"frames").await.unwrap();
        match task.await.unwrap() {
            Ended::H2(read) => assert!(read.starts_with(H2_PREFACE)),
            e => panic!("{e:?}"),
        }
        // Not sniffed (TLS with ALPN http/1.1): a malformed request.
        let mut s = settings();
        s.sniff_h2 = false;
        let (mut c, _task) = start(s, None, None);
        c.write_all(H2_PREFACE).await.unwrap();
        let all = read_all(&mut c).await;
        assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
    }

    #[tokio::test]
    async fn bad_heads_get_a_reason_and_a_close() {
        for (head, status, reason) in [
            (
                &b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..],
                "400",
                "bad_http",
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                "400",
                "bad_http",
            ),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
                "501",
                "unsupported_transfer_coding",
            ),
            (&[b'x'; 2048][..], "431", "head_too_large"),
        ] {
            let (mut c, task) = start(settings(), None, None);
            c.write_all(head).await.unwrap();
            let all = read_all(&mut c).await;
            assert!(all.starts_with(&format!("HTTP/1.1 {status} ")), "{all}");
            assert!(all.contains("connection: close\r\n"), "{all}");
            assert!(all.contains(&format!("\"reason\":\"{reason}\"")), "{all}");
            assert!(matches!(task.await.unwrap(), Ended::Closed));
        }
    }

    #[tokio::test]
    async fn a_slow_head_is_cut_off_silently() {
        let mut s = settings();
        s.header_read_timeout = Duration::from_millis(50);
        let (mut c, task) = start(s, None, None);
        c.write_all(b"GET / HTTP/1.1\r\nx: ").await.unwrap();
        // Nothing more comes: closed at the deadline, with no answer.
        assert_eq!(read_all(&mut c).await, "");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
    }

    /// Serves `io` until it ends, answering 1 MiB to any request, with a
    /// short `send_timeout`.
    async fn serve_big_answer<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) -> Ended {
        let mut s = settings();
        s.send_timeout = Duration::from_millis(50);
        let stop = pin!(std::future::pending::<()>());
        serve(io, &s, stop, |_, _| async {
            Response::new(crate::body::full(vec![b'x'; 1 << 20]))
        })
        .await
    }

    #[tokio::test]
    async fn a_client_that_reads_nothing_is_closed() {
        // A pipe that holds 4 KiB and an answer of 1 MiB that no one reads.
        let (mut c, mut server) = duplex(4096);
        let task = tokio::spawn(async move { serve_big_answer(&mut server).await });
        c.write_all(b"GET /big HTTP/1.1\r\n\r\n").await.unwrap();
        // Without the bound, this waits for as long as the client does.
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(ended, Ok(Ok(Ended::Closed))), "{ended:?}");
        // What was written is a prefix of the answer, and then the end.
        let got = read_all(&mut c).await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK") && got.len() < 1 << 20,
            "{}",
            got.len()
        );
    }

    #[tokio::test]
    async fn a_tls_client_that_reads_nothing_is_closed() {
        // Over TLS the close itself writes (close_notify and what rustls
        // still holds): it is bounded by send_timeout too.
        use crate::tls::{CertFiles, Resolver, read_certs, server_configs};
        let dir = std::env::temp_dir().join(format!("stoa-h1-tls-{}", std::process::id()));
        let mut files = CertFiles::development(&dir).unwrap();
        let ca = read_certs(&dir.join("ca.pem")).unwrap();
        let (tcp, _) = server_configs(Resolver::load(&mut files).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(ca);
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

        let (c, server) = duplex(4096);
        let task = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(tcp)
                .accept(server)
                .await
                .unwrap();
            serve_big_answer(&mut tls).await
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, c)
            .await
            .unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\n\r\n").await.unwrap();
        c.flush().await.unwrap();
        // The client reads nothing more, and keeps its end open.
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(matches!(ended, Ok(Ok(Ended::Closed))), "{ended:?}");
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn stop_closes_idle_connections_and_the_next_answer() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, task) = start(settings(), None, Some(rx));
        c.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
        let first = read_some(&mut c, "GET /1 ").await;
        assert!(!first.contains("connection: close"), "{first}");
        tx.send(()).unwrap();
        // Idle: closed at once.
        assert!(matches!(task.await.unwrap(), Ended::Closed));

        // Stopped while a request is under way: answered, then closed.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let calls = Arc::new(AtomicUsize::new(0));
        let (mut c, mut server) = duplex(4096);
        let n = calls.clone();
        let task = tokio::spawn(async move {
            let stop = pin!(async move {
                let _ = rx.await;
            });
            let mut tx = Some(tx);
            serve(&mut server, &settings(), stop, |head, body| {
                n.fetch_add(1, Ordering::SeqCst);
                if let Some(tx) = tx.take() {
                    tx.send(()).unwrap();
                }
                echo(head, body, None)
            })
            .await
        });
        c.write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let all = read_all(&mut c).await;
        assert!(all.contains("connection: close\r\n\r\nGET /1 "), "{all}");
        assert!(!all.contains("GET /2"), "{all}");
        assert!(matches!(task.await.unwrap(), Ended::Closed));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
