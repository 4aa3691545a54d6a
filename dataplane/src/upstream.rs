//! Talking to upstream MCP servers: a pooled HTTP client with explicit
//! timeouts, and the pump that relays an upstream SSE stream to a client
//! (bounded events, keep-alives, idle timeout, early end on shutdown).

use std::{pin::pin, time::Duration};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    body::{BoxError, ChannelBody, ReadError, read_whole},
    client::{Client, ClientConfig, ClientError, Outgoing, UpstreamBody},
    config::Limits,
    error::GatewayError,
    gateway::{KeyWatch, Standing},
    headers::Name,
    mcp,
    model::Upstream,
    sse,
};

/// The client side of the relay (see `client`): its pools of upstream
/// connections are per thread, so a request served on a worker thread
/// (`listen::Workers`) reuses connections owned by that thread.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client,
}

impl UpstreamClient {
    pub fn new(
        limits: &Limits,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Self {
        UpstreamClient {
            client: Client::new(
                ClientConfig {
                    connect_timeout: limits.upstream_connect_timeout,
                    idle_timeout: limits.upstream_idle_timeout,
                    max_idle: 256,
                    max_head_bytes: limits.max_header_bytes.max(8192),
                },
                extra_roots,
            ),
        }
    }

    /// Sends a request to `up` and waits at most `timeout` for its response
    /// head. As in `Client::send`, the request is consumed before the
    /// future is built.
    pub fn send<'a>(
        &'a self,
        up: &'a Upstream,
        req: Outgoing<'a>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, GatewayError>> + Send + 'a {
        // A map, not an `async` block awaiting `sent`: a block would hold
        // the timeout future twice (its capture and its awaitee, 664 bytes
        // each), in every relay future that awaits this one.
        tokio::time::timeout(timeout, self.client.send(req)).map(move |sent| match sent {
            Err(_) => Err(GatewayError::UpstreamTimeout {
                upstream: up.name.to_string(),
                after_ms: timeout.as_millis() as u64,
            }),
            Ok(Err(ClientError::Protocol(reason))) => Err(GatewayError::UpstreamBadResponse {
                upstream: up.name.to_string(),
                reason,
            }),
            Ok(Err(e)) => Err(GatewayError::UpstreamUnavailable {
                upstream: up.name.to_string(),
                reason: error_chain(&e),
            }),
            Ok(Ok(resp)) => Ok(resp),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Headers of the client's request that reach the upstream. Everything else,
/// above all `Authorization` and `X-API-Key`, stays at the gateway.
static FORWARDED: [Name; 9] = [
    Name::ACCEPT,
    Name::CONTENT_TYPE,
    Name::MCP_PROTOCOL_VERSION,
    Name::MCP_METHOD,
    Name::MCP_NAME,
    Name::LAST_EVENT_ID,
    Name::TRACEPARENT,
    Name::TRACESTATE,
    Name::USER_AGENT,
];

/// Builds a request to `up`: the client's MCP headers, the upstream's own
/// session id, and the upstream's configured credentials (which win over a
/// client header of the same name).
pub fn upstream_request<'u, 'h>(
    up: &'u Upstream,
    method: http::Method,
    client_headers: impl IntoIterator<Item = (Name, &'h [u8], &'h [u8])>,
    upstream_session: Option<&str>,
    body: Bytes,
) -> Result<Outgoing<'u>, GatewayError> {
    let mut req = Outgoing::new(method, &up.url);
    // One pass over what the client sent. 2026-07-28 also mirrors tool
    // arguments into `Mcp-Param-*`, which the upstream checks.
    for (id, raw, v) in client_headers {
        let param;
        let name = if FORWARDED.contains(&id) {
            id.as_str()
        } else if id == Name::OTHER
            && mcp::is_param_header(raw)
            && let Ok(n) = HeaderName::from_bytes(raw)
        {
            param = n;
            param.as_str()
        } else {
            continue;
        };
        if !up.headers.iter().any(|(k, _)| k.as_str() == name) {
            req.field(name, v);
        }
    }
    if let Some(s) = upstream_session {
        let v = HeaderValue::from_str(s).map_err(|_| {
            GatewayError::Internal("sealed upstream session id is not a header value".into())
        })?;
        req.header(&mcp::HDR_SESSION, &v);
    }
    for (k, v) in &up.headers {
        req.header(k, v);
    }
    req.body(body);
    Ok(req)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Json,
    Sse,
    Empty,
}

/// Classifies an upstream answer, turning its failures into our errors.
pub fn classify(up: &Upstream, resp: &Response<UpstreamBody>) -> Result<Payload, GatewayError> {
    let status = resp.status();
    if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
        return Ok(Payload::Empty);
    }
    if status.is_server_error() {
        return Err(GatewayError::UpstreamBadResponse {
            upstream: up.name.to_string(),
            reason: format!("answered HTTP {status}"),
        });
    }
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match mcp::media_type(ct) {
        e if e.eq_ignore_ascii_case("application/json") => Ok(Payload::Json),
        e if e.eq_ignore_ascii_case("text/event-stream") => Ok(Payload::Sse),
        _ if !status.is_success() => Ok(Payload::Json),
        _ => Err(GatewayError::UpstreamBadResponse {
            upstream: up.name.to_string(),
            reason: format!("unexpected content type {ct:?}"),
        }),
    }
}

/// Reads a whole JSON answer, bounded in size and time.
pub async fn read_json_body(
    up: &Upstream,
    body: UpstreamBody,
    limits: &Limits,
) -> Result<Bytes, GatewayError> {
    let too_large = || GatewayError::UpstreamBadResponse {
        upstream: up.name.to_string(),
        reason: format!("response exceeds {} bytes", limits.max_response_bytes),
    };
    // Most answers came whole with their head: no timer, no collecting.
    let body = match body.into_complete() {
        Ok(b) if b.len() > limits.max_response_bytes => return Err(too_large()),
        Ok(b) => return Ok(b),
        Err(body) => body,
    };
    read_whole(body, limits.max_response_bytes, limits.request_timeout)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => too_large(),
            ReadError::TimedOut => GatewayError::UpstreamTimeout {
                upstream: up.name.to_string(),
                after_ms: limits.request_timeout.as_millis() as u64,
            },
            ReadError::Failed(e) => GatewayError::UpstreamBadResponse {
                upstream: up.name.to_string(),
                reason: format!("response body failed: {}", error_chain(&*e)),
            },
        })
}

/// Reads a whole JSON answer and parses it.
pub async fn read_json(
    up: &Upstream,
    body: UpstreamBody,
    limits: &Limits,
) -> Result<Value, GatewayError> {
    parse_json(up, &read_json_body(up, body, limits).await?)
}

/// An answer's JSON text, parsed.
pub fn parse_json(up: &Upstream, text: &[u8]) -> Result<Value, GatewayError> {
    serde_json::from_slice(text).map_err(|e| GatewayError::UpstreamBadResponse {
        upstream: up.name.to_string(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// The one JSON-RPC response to request `id`, whether the upstream answered
/// with JSON or with an SSE stream (other events on the stream are dropped).
pub async fn read_message(
    up: &Upstream,
    resp: Response<UpstreamBody>,
    payload: Payload,
    id: Option<&Value>,
    limits: &Limits,
) -> Result<Value, GatewayError> {
    match payload {
        Payload::Json => read_json(up, resp.into_body(), limits).await,
        Payload::Sse => read_response_event(up, resp.into_body(), id, limits).await,
        Payload::Empty => Err(GatewayError::UpstreamBadResponse {
            upstream: up.name.to_string(),
            reason: "no answer to a request".into(),
        }),
    }
}

/// Reads SSE events until the response to `id` arrives (bounded in size and time).
async fn read_response_event(
    up: &Upstream,
    body: UpstreamBody,
    id: Option<&Value>,
    limits: &Limits,
) -> Result<Value, GatewayError> {
    let bad = |reason: String| GatewayError::UpstreamBadResponse {
        upstream: up.name.to_string(),
        reason,
    };
    let work = async {
        let mut body = std::pin::pin!(body);
        let mut parser = sse::Parser::new(limits.max_sse_event_bytes);
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad(format!("stream failed: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            parser
                .feed(&data, &mut events)
                .map_err(|e| bad(e.to_string()))?;
            for ev in events.drain(..) {
                let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                    continue;
                };
                let is_response = v.get("method").is_none()
                    && (v.get("result").is_some() || v.get("error").is_some());
                if is_response && (id.is_none() || v.get("id") == id) {
                    return Ok(v);
                }
            }
        }
        Err(bad("stream ended before the response".into()))
    };
    tokio::time::timeout(limits.request_timeout, work)
        .await
        .map_err(|_| GatewayError::UpstreamTimeout {
            upstream: up.name.to_string(),
            after_ms: limits.request_timeout.as_millis() as u64,
        })?
}

/// What the pump does with each upstream event before it reaches the client.
pub trait EventMap: Send + 'static {
    /// Returns the events to send in its place (none drops it).
    fn map(&mut self, ev: sse::Event) -> Vec<sse::Event>;
    /// An event that tells the client why the stream failed, if it needs one
    /// (a POST stream owes the client a response to its request).
    fn on_error(&mut self, err: &GatewayError) -> Option<sse::Event>;
    /// The last event when the gateway ends the stream as it drains.
    fn on_drain(&mut self) -> Option<sse::Event> {
        None
    }
}

/// Passes events unchanged.
pub struct Unchanged;

impl EventMap for Unchanged {
    fn map(&mut self, ev: sse::Event) -> Vec<sse::Event> {
        vec![ev]
    }
    fn on_error(&mut self, _: &GatewayError) -> Option<sse::Event> {
        None
    }
}

pub struct PumpConfig {
    pub upstream: String,
    pub max_event: usize,
    pub idle_timeout: Duration,
    pub keepalive: Duration,
    /// When cancelled the stream ends cleanly, so the client resumes elsewhere.
    pub end_on: Option<CancellationToken>,
    /// The stream ends when its key is revoked or loses this upstream
    /// (`None`: its owner watches the key).
    pub key: Option<KeyWatch>,
}

/// Relays one upstream SSE body into a client body, via a bounded channel
/// (back-pressure reaches the upstream). Ends when either side does.
pub fn spawn_pump(
    body: UpstreamBody,
    map: impl EventMap,
    cfg: PumpConfig,
    guard: impl Send + 'static,
) -> ChannelBody {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    spawn_pump_into(body, map, cfg, guard, tx);
    ChannelBody::new(rx)
}

pub type FrameSender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// Like `spawn_pump`, into a channel that other pumps may share (merged streams).
pub fn spawn_pump_into(
    body: UpstreamBody,
    mut map: impl EventMap,
    cfg: PumpConfig,
    guard: impl Send + 'static,
    tx: FrameSender,
) {
    tokio::spawn(async move {
        let _guard = guard;
        let mut body = pin!(body);
        let mut parser = sse::Parser::new(cfg.max_event);
        let mut events = Vec::new();
        let mut keepalive = tokio::time::interval(cfg.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let idle = tokio::time::sleep(cfg.idle_timeout);
        let mut idle = pin!(idle);
        let end_on = cfg.end_on.clone().unwrap_or_default();
        let mut key = cfg.key;
        let failure: Option<GatewayError> = loop {
            tokio::select! {
                frame = body.frame() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + cfg.idle_timeout);
                    let data = match frame {
                        None => break None,
                        Some(Err(e)) => break Some(GatewayError::UpstreamBadResponse {
                            upstream: cfg.upstream.clone(),
                            reason: format!("stream failed: {}", error_chain(&*e)),
                        }),
                        Some(Ok(f)) => match f.into_data() {
                            Ok(d) => d,
                            Err(_) => continue,
                        },
                    };
                    if let Err(e) = parser.feed(&data, &mut events) {
                        break Some(GatewayError::UpstreamBadResponse { upstream: cfg.upstream.clone(), reason: e.to_string() });
                    }
                    for ev in events.drain(..) {
                        for out in map.map(ev) {
                            if tx.send(Ok(Frame::data(out.encode()))).await.is_err() {
                                return;
                            }
                        }
                    }
                    keepalive.reset();
                }
                _ = keepalive.tick() => {
                    if tx.send(Ok(Frame::data(sse::keepalive()))).await.is_err() {
                        return;
                    }
                }
                _ = &mut idle => break Some(GatewayError::UpstreamTimeout {
                    upstream: cfg.upstream.clone(),
                    after_ms: cfg.idle_timeout.as_millis() as u64,
                }),
                standing = async {
                    match key.as_mut() {
                        Some(k) => k.changed().await,
                        None => std::future::pending().await,
                    }
                } => match standing {
                    Standing::Revoked => break Some(GatewayError::KeyRevoked),
                    Standing::Regranted if !key.as_ref().is_some_and(|k| k.grants(&cfg.upstream)) => break Some(GatewayError::NotGranted(
                        format!("upstream {:?} is no longer granted to this key", cfg.upstream),
                    )),
                    Standing::Regranted | Standing::Same => {}
                },
                _ = end_on.cancelled() => {
                    if let Some(ev) = map.on_drain() {
                        let _ = tx.send(Ok(Frame::data(ev.encode()))).await;
                    }
                    break None;
                }
                _ = tx.closed() => return,
            }
        };
        if let Some(err) = failure {
            tracing::warn!(upstream = %cfg.upstream, reason = err.reason(), "upstream stream ended: {err}");
            if let Some(ev) = map.on_error(&err) {
                let _ = tx.send(Ok(Frame::data(ev.encode()))).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{headers::Headers, model::UpstreamName};

    #[test]
    fn only_mcp_fields_reach_the_upstream_and_its_credentials_win() {
        let up = Upstream {
            name: UpstreamName::parse("u").unwrap(),
            url: "http://127.0.0.1:1/mcp".parse().unwrap(),
            tenant: None,
            headers: vec![(header::USER_AGENT, HeaderValue::from_static("configured"))],
        };
        let client: Headers = [
            ("Authorization", "Bearer stoa_client_secret"),
            ("x-api-key", "stoa_client_secret"),
            ("Content-Type", "application/json"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Param-Region", "eu"),
            ("user-agent", "the client's"),
            ("cookie", "c=1"),
            ("Host", "gateway"),
        ]
        .into_iter()
        .collect();
        let req = upstream_request(
            &up,
            http::Method::POST,
            client.iter(),
            Some("up-1"),
            Bytes::new(),
        )
        .unwrap();
        let lines = String::from_utf8(req.lines().to_vec()).unwrap();
        assert_eq!(
            lines,
            "content-type: application/json\r\n\
             mcp-protocol-version: 2026-07-28\r\n\
             mcp-param-region: eu\r\n\
             mcp-session-id: up-1\r\n\
             user-agent: configured\r\n"
        );
    }
}
