//! Server-Sent Events: the response body type and the sink tools write into.
//!
//! Every event carries an id `<stream>-<seq>` so a client can name the stream and
//! position it last saw (`Last-Event-ID`). A stream starts with a priming event
//! (id + empty data) so even a stream closed early can be resumed.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use super::session::Session;

/// A response body fed by a channel; it ends when every sender is dropped.
pub(crate) struct SseBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl SseBody {
    pub fn channel() -> (mpsc::UnboundedSender<Bytes>, SseBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, SseBody { rx })
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// Formats one event. `data` is compact JSON, so it never contains a newline.
pub(crate) fn event(stream: u64, seq: u64, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    out.extend_from_slice(format!("id: {stream}-{seq}\ndata: ").as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The priming event: an id with empty data, optionally telling the client how
/// long to wait before reconnecting.
pub(crate) fn priming(stream: u64, retry_ms: Option<u32>) -> Bytes {
    match retry_ms {
        Some(ms) => Bytes::from(format!("id: {stream}-0\nretry: {ms}\ndata: \n\n")),
        None => Bytes::from(format!("id: {stream}-0\ndata: \n\n")),
    }
}

/// Parses a `Last-Event-ID` of the form `<stream>-<seq>`.
pub(crate) fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (stream, seq) = id.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

/// Where a tool writes its notifications, server→client requests and final response.
pub(crate) enum Sink {
    /// Straight to the client (2026 wire: no resumption). Dropping the receiver,
    /// i.e. the client going away, cancels the work.
    Direct {
        tx: mpsc::UnboundedSender<Bytes>,
        stream: u64,
        seq: u64,
    },
    /// Through the session's stream log, so the client can resume it with
    /// `GET` + `Last-Event-ID` after a disconnect (2025 wire).
    Logged { session: Arc<Session>, stream: u64 },
}

impl Sink {
    /// A direct stream with its priming event already queued.
    pub fn direct(stream: u64) -> (Sink, SseBody) {
        let (tx, body) = SseBody::channel();
        let _ = tx.send(priming(stream, None));
        (Sink::Direct { tx, stream, seq: 0 }, body)
    }

    /// Sends one JSON message. Returns false once the client has gone away and
    /// nobody can ever read the event (a logged stream can always be resumed).
    pub fn send(&mut self, data: &[u8]) -> bool {
        match self {
            Sink::Direct { tx, stream, seq } => {
                *seq += 1;
                tx.send(event(*stream, *seq, data)).is_ok()
            }
            Sink::Logged { session, stream } => {
                session.log_event(*stream, data);
                true
            }
        }
    }

    /// Sends bytes as they are (an SSE comment). Same return as `send`.
    pub fn send_raw(&mut self, raw: Bytes) -> bool {
        match self {
            Sink::Direct { tx, .. } => tx.send(raw).is_ok(),
            Sink::Logged { .. } => true,
        }
    }

    /// Resolves when the client of a direct stream has gone away (never for a
    /// logged one, which can be resumed).
    pub async fn closed(&self) {
        match self {
            Sink::Direct { tx, .. } => tx.closed().await,
            Sink::Logged { .. } => std::future::pending().await,
        }
    }

    /// Closes the client's connection while the work goes on (SEP-1699 polling);
    /// later events wait in the log for a resuming `GET`.
    pub fn detach(&mut self) {
        if let Sink::Logged { session, stream } = self {
            session.detach_stream(*stream);
        }
    }

    /// Ends the stream after the final response.
    pub fn finish(self) {
        if let Sink::Logged { session, stream } = self {
            session.finish_stream(stream);
        }
    }
}
