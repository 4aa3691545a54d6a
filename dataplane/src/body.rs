//! Response bodies: one boxed type for every response, a channel-fed body
//! for relayed streams, and bounded reading of request bodies.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::GatewayError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A body fed by a task through a bounded channel.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl ChannelBody {
    pub fn new(rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> Self {
        ChannelBody { rx }
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    json_bytes(
        status,
        serde_json::to_vec(v).expect("a Value always serializes"),
    )
}

/// A response of JSON text already written.
pub fn json_bytes(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .expect("static response parts are valid")
}

/// The one mapping from an error to what the client sees (`stateless`: the
/// request speaks 2026-07-28).
pub fn error_response(err: &GatewayError, id: Option<&Value>, stateless: bool) -> Response<Body> {
    let mut resp = json_response(err.status_for(stateless), &err.rpc_response(id));
    match err {
        GatewayError::MissingKey | GatewayError::BadKey => {
            // RFC 6750: no error code when the request carried no credentials.
            let challenge = match err {
                GatewayError::MissingKey => "Bearer realm=\"stoa\"",
                _ => {
                    "Bearer realm=\"stoa\", error=\"invalid_token\", error_description=\"unknown or invalid API key\""
                }
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(challenge),
            );
        }
        GatewayError::MethodNotAllowed(_) => {
            resp.headers_mut().insert(
                header::ALLOW,
                http::HeaderValue::from_static("GET, POST, DELETE"),
            );
        }
        GatewayError::StatelessMethod(_) => {
            resp.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        }
        _ => {}
    }
    if err.retryable() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    resp
}

/// Reads a request body, refusing more than `max` bytes or more than `timeout`.
pub async fn read_bounded<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, GatewayError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > max as u64 {
        return Err(GatewayError::BodyTooLarge { limit: max });
    }
    read_whole(body, max, timeout).await.map_err(|e| match e {
        ReadError::TooLarge => GatewayError::BodyTooLarge { limit: max },
        ReadError::TimedOut => GatewayError::BodyTimeout,
        ReadError::Failed(e) => GatewayError::InvalidRequest(format!("request body failed: {e}")),
    })
}

/// Why `read_whole` stopped.
pub enum ReadError {
    TooLarge,
    TimedOut,
    Failed(BoxError),
}

/// Reads a whole body (a request's or an upstream's), at most `max` bytes
/// within `timeout`; trailers are dropped.
///
/// A body that is whole at once (a small one that arrived with its head)
/// arms no timer and is not copied: one frame is handed on as it is. The
/// timer starts at the first wait, and bytes are gathered only when a
/// second frame comes.
pub async fn read_whole<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        loop {
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(None) => {
                    let whole = match first.take() {
                        Some(one) => one,
                        None => std::mem::take(&mut rest).freeze(),
                    };
                    return Poll::Ready(Ok(whole));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ReadError::Failed(e.into()))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let held = first.as_ref().map_or(0, Bytes::len) + rest.len();
                    if held + data.len() > max {
                        return Poll::Ready(Err(ReadError::TooLarge));
                    }
                    // One frame is kept as it came; from the second on,
                    // all of them are gathered in `rest`.
                    if let Some(one) = first.take() {
                        rest.extend_from_slice(&one);
                        rest.extend_from_slice(&data);
                    } else if rest.is_empty() {
                        first = Some(data);
                    } else {
                        rest.extend_from_slice(&data);
                    }
                }
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(ReadError::TimedOut));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(frames: Vec<Frame<Bytes>>) -> ChannelBody {
        let (tx, rx) = mpsc::channel(frames.len().max(1));
        for f in frames {
            tx.try_send(Ok(f)).unwrap();
        }
        ChannelBody::new(rx)
    }

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn bodies_are_read_whole_and_bounded() {
        let t = Duration::from_secs(5);
        let one = read_whole(Full::new(Bytes::from_static(b"abc")), 3, t).await;
        assert_eq!(one.ok().as_deref(), Some(&b"abc"[..]));
        let many = vec![
            data(""),
            data("ab"),
            data("cd"),
            Frame::trailers(Default::default()),
            data("e"),
        ];
        let got = read_whole(fed(many), 5, t).await;
        assert_eq!(got.ok().as_deref(), Some(&b"abcde"[..]));
        let over = read_whole(fed(vec![data("ab"), data("cd")]), 3, t).await;
        assert!(matches!(over, Err(ReadError::TooLarge)));
        let none = read_whole(Empty::<Bytes>::new(), 0, t).await;
        assert_eq!(none.ok().as_deref(), Some(&b""[..]));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(data("ab"))).await.unwrap();
        let got = read_whole(ChannelBody::new(rx), 10, Duration::from_millis(50)).await;
        assert!(matches!(got, Err(ReadError::TimedOut)));
        drop(tx);
    }
}
