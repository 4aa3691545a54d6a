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
    let body = serde_json::to_vec(v).expect("a Value always serializes");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
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
/// within `timeout`.
pub async fn read_whole<B>(body: B, max: usize, timeout: Duration) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, max);
    match within(timeout, limited.collect()).await {
        Err(_) => Err(ReadError::TimedOut),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Ok(Err(e)) => Err(ReadError::Failed(e)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// `tokio::time::timeout`, but a future that is ready at once (a small body
/// that arrived with its head) is taken without arming a timer.
async fn within<F: Future>(
    timeout: Duration,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(timeout, fut).await,
    }
}
