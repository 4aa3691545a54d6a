//! `/mcp/<upstream>`: one upstream relayed unchanged, except for what the
//! gateway owns: the session id (sealed), credentials (injected), and what
//! the key may see and call (tools filtered, calls refused).

use std::{borrow::Cow, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::{
    body::{self, Body},
    client::UpstreamBody,
    error::GatewayError,
    gateway::{Call, Gateway, KeyWatch, ReqCtx, Runtime, unix_now},
    headers::Headers,
    mcp::{self, Kind, Peek},
    metrics::{GaugeGuard, method_label},
    model::{ApiKey, ToolFilter, Upstream},
    session::{SessionState, UpstreamSession},
    sse,
    upstream::{self, EventMap, Payload, PumpConfig, Unchanged},
};

pub type Failure = (GatewayError, Option<Value>);

/// A POST body as both MCP endpoints see it before routing.
pub struct Parsed<'b> {
    pub peek: Peek<'b>,
    pub kind: Kind,
    /// The request's id, for error responses.
    pub id: Option<Value>,
    pub version: Cow<'static, str>,
}

/// Classifies a POST body and checks the version and mirrored headers. It
/// parses first, so that every error after parsing answers the request's id.
pub fn parse_post<'b>(
    headers: &Headers,
    body: &'b [u8],
    ctx: &mut ReqCtx,
) -> Result<Parsed<'b>, Failure> {
    let version = mcp::request_version(headers);
    let shown = version.as_deref().unwrap_or(mcp::DEFAULT_VERSION);
    let (peek, kind) = Peek::parse(body, shown).map_err(|e| (e, None))?;
    let id = peek.id.and_then(mcp::id_value);
    let version = version.map_err(|e| (e, id.clone()))?;
    ctx.stateless = version == mcp::STATELESS;
    ctx.method = if kind == Kind::Response {
        "response"
    } else {
        method_label(peek.method())
    };
    mcp::check_mirrored_headers(headers, &peek, kind, &version).map_err(|e| (e, id.clone()))?;
    Ok(Parsed {
        peek,
        kind,
        id,
        version,
    })
}

/// A request's future, boxed where it is chosen.
pub type Handling<'r> = Pin<Box<dyn Future<Output = Result<Response<Body>, Failure>> + Send + 'r>>;

/// The request's own method's future, boxed: built in place of an `async`
/// match over all three, it is moved once (into its box), not twice (into
/// the match's state, then that into a box), and each method's future is
/// its own size.
pub fn handle<'r>(
    call: Call<'r>,
    up: &'r Arc<Upstream>,
    filter: &'r ToolFilter,
    ctx: &'r mut ReqCtx,
) -> Handling<'r> {
    match call.method {
        Method::POST => Box::pin(post(call, up, filter, ctx)),
        Method::GET => without_id(get(call, up, ctx)),
        Method::DELETE => without_id(delete(call, up, ctx)),
        ref m => refused(m),
    }
}

/// A GET's or DELETE's future, boxed: its errors answer no request id.
pub fn without_id<'r>(
    f: impl Future<Output = Result<Response<Body>, GatewayError>> + Send + 'r,
) -> Handling<'r> {
    Box::pin(async move { f.await.map_err(|e| (e, None)) })
}

/// A method neither endpoint serves.
pub fn refused(m: &Method) -> Handling<'static> {
    let refusal = Err((GatewayError::MethodNotAllowed(m.clone()), None));
    Box::pin(std::future::ready(refusal))
}

async fn post(
    call: Call<'_>,
    up: &Arc<Upstream>,
    filter: &ToolFilter,
    ctx: &mut ReqCtx,
) -> Result<Response<Body>, Failure> {
    let Call {
        gw,
        rt,
        key,
        headers,
        body,
        memo,
        ..
    } = call;
    // Accept is the upstream's to judge: this endpoint relays unchanged.
    mcp::check_content_type(headers).map_err(|e| (e, None))?;
    // What the call needs after the upstream answers is read from the peek
    // in a block of its own: the peek, borrowed from the body, must not
    // keep its place in this future across the upstream call.
    let (id, session, list_filter, init_version, private, listen, safe) = {
        let Parsed {
            peek,
            kind,
            id,
            version,
        } = parse_post(headers, &body, ctx)?;
        let session = match gw.open_session(rt, headers, key.prefix.as_str(), memo) {
            Ok(s) => s,
            Err(e) => return Err((e, id)),
        };
        if session
            .as_ref()
            .is_some_and(|s| s.upstream(up.name.as_str()).is_none())
        {
            return Err((GatewayError::UnknownSession, id));
        }
        let is_request = kind == Kind::Request;
        let method = if is_request { peek.method() } else { "" };
        let mut list_filter = None;
        match method {
            "tools/call" => {
                let tool = peek.params.as_ref().and_then(|p| p.name.as_deref());
                let Some(tool) = tool else {
                    let e = GatewayError::InvalidParams("tools/call needs params.name".into());
                    return Err((e, id));
                };
                ctx.tool = Some(tool.to_owned());
                if !filter.allows(tool) {
                    gw.metrics
                        .tool_refused(up.name.as_str(), tool, memo.map(|m| &m.tool_calls));
                    let e = GatewayError::NotGranted(format!(
                        "tool {tool:?} of upstream {:?} is not granted to this key",
                        up.name.as_str()
                    ));
                    return Err((e, id));
                }
            }
            "tools/list" if !filter.is_all() => list_filter = Some(filter.clone()),
            _ => {}
        }
        // `Some` for `initialize` only: the version the client asked for.
        let init_version = (method == "initialize").then(|| {
            peek.params
                .as_ref()
                .and_then(|p| p.protocol_version.as_deref())
                .map(str::to_owned)
        });
        let stateless = version == mcp::STATELESS;
        // Only 2026-07-28 results carry cache hints; older answers stay bytes.
        let private = is_request && stateless && mcp::cacheable(method);
        // A listen stream never ends by itself: it ends, with its result,
        // when the gateway drains.
        let listen = is_request && stateless && method == "subscriptions/listen";
        let safe = is_request && mcp::replay_safe(method);
        (
            id,
            session,
            list_filter,
            init_version,
            private,
            listen,
            safe,
        )
    };
    let fail = |e: GatewayError| (e, id.clone());
    let up_session = session.as_ref().and_then(|s| s.upstream(up.name.as_str()));
    let req = upstream::upstream_request(
        up,
        Method::POST,
        headers.iter(),
        up_session.and_then(|u| u.session.as_deref()),
        body,
    )
    .map_err(fail)?
    .replay_safe(safe);
    let resp = gw
        .client
        .send(up, req, rt.limits.upstream_response_timeout)
        .await
        .inspect_err(|e| count_upstream_error(ctx, gw, e))
        .map_err(fail)?;
    let payload = upstream::classify(up, &resp)
        .inspect_err(|e| count_upstream_error(ctx, gw, e))
        .map_err(fail)?;
    if let Some(tool) = &ctx.tool {
        gw.metrics.tool_relayed(
            up.name.as_str(),
            tool,
            resp.status(),
            memo.map(|m| &m.tool_calls),
        );
    }

    if let Some(init_version) = init_version
        && resp.status().is_success()
    {
        // Boxed: once per session, and its future is larger than the rest
        // of this one, which every call would otherwise move around.
        return Box::pin(initialize(
            gw,
            rt,
            key,
            up,
            resp,
            payload,
            init_version,
            id.clone(),
        ))
        .await
        .map_err(fail);
    }
    let status = resp.status();
    match payload {
        Payload::Empty => Ok(status_only(status)),
        Payload::Json => {
            if list_filter.is_some() || private {
                let mut v = upstream::read_json(up, resp.into_body(), &rt.limits)
                    .await
                    .map_err(fail)?;
                if let Some(f) = &list_filter {
                    filter_tools(&mut v, f);
                }
                mcp::keep_private(&mut v);
                return Ok(body::json_response(status, &v));
            }
            // Read whole, bounded in size and in time (an upstream that
            // stalls mid-body must not hold the client's connection); most
            // answers arrived with their head and cost no wait at all.
            let (mut parts, incoming) = resp.into_parts();
            let bytes = upstream::read_json_body(up, incoming, &rt.limits)
                .await
                .map_err(fail)?;
            // The answer's map (only `client::KEPT`) becomes the
            // response's, once it holds nothing but Content-Type.
            let h = &mut parts.headers;
            if h.len() > usize::from(h.contains_key(header::CONTENT_TYPE)) {
                let ct = h.remove(header::CONTENT_TYPE);
                h.clear();
                h.extend(ct.map(|v| (header::CONTENT_TYPE, v)));
            }
            parts.version = http::Version::default();
            parts.extensions.clear();
            Ok(Response::from_parts(parts, body::full(bytes)))
        }
        Payload::Sse => {
            let guard = GaugeGuard::new(gw.metrics.active_streams.with_label_values(&["post"]));
            let map = PostStream {
                id: id.clone(),
                filter: list_filter,
                private,
                listen,
            };
            let end_on = listen.then(|| gw.draining.clone());
            Ok(sse_response(
                status,
                upstream::spawn_pump(
                    resp.into_body(),
                    map,
                    pump_cfg(rt, up, end_on, Some(gw.watch_key(key))),
                    guard,
                ),
            ))
        }
    }
}

/// The upstream accepted `initialize`: keep its session id and version in a
/// sealed session id of our own, and hand the client the upstream's answer.
#[allow(clippy::too_many_arguments)]
async fn initialize(
    gw: &Arc<Gateway>,
    rt: &Runtime,
    key: &ApiKey,
    up: &Arc<Upstream>,
    resp: Response<UpstreamBody>,
    payload: Payload,
    requested: Option<String>,
    id: Option<Value>,
) -> Result<Response<Body>, GatewayError> {
    let up_session = resp
        .headers()
        .get(mcp::HDR_SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = resp.status();
    let message = upstream::read_message(up, resp, payload, id.as_ref(), &rt.limits).await?;
    let mut out = body::json_response(status, &message);
    if let Some(version) = message
        .pointer("/result/protocolVersion")
        .and_then(Value::as_str)
    {
        let state = SessionState {
            key: key.prefix.as_str().to_owned(),
            issued: unix_now(),
            version: version.to_owned(),
            upstreams: vec![UpstreamSession {
                name: up.name.to_string(),
                session: up_session,
                version: version.to_owned(),
            }],
            client_caps: None,
        };
        let sealed = rt.sessions.seal(&state);
        out.headers_mut().insert(
            mcp::HDR_SESSION,
            sealed
                .parse()
                .map_err(|_| GatewayError::Internal("sealed id is not a header value".into()))?,
        );
        gw.metrics.sessions.with_label_values(&["opened"]).inc();
        tracing::debug!(upstream = %up.name, requested = requested.as_deref().unwrap_or(""), version, "session opened");
    }
    Ok(out)
}

async fn get(
    call: Call<'_>,
    up: &Arc<Upstream>,
    ctx: &mut ReqCtx,
) -> Result<Response<Body>, GatewayError> {
    let (gw, rt) = (call.gw, call.rt);
    ctx.method = "GET";
    if !mcp::accepts(call.headers, "text/event-stream") {
        return Err(GatewayError::NotAcceptable);
    }
    mcp::request_version(call.headers)?;
    let session = call.session()?;
    let resp = send_bodiless(&call, up, Method::GET, session.as_deref()).await?;
    let status = resp.status();
    match upstream::classify(up, &resp)? {
        Payload::Sse if status.is_success() => {
            let guard = GaugeGuard::new(gw.metrics.active_streams.with_label_values(&["get"]));
            let cfg = pump_cfg(
                rt,
                up,
                Some(gw.draining.clone()),
                Some(gw.watch_key(call.key)),
            );
            Ok(sse_response(
                status,
                upstream::spawn_pump(resp.into_body(), Unchanged, cfg, guard),
            ))
        }
        _ => passthrough(up, resp, &rt.limits).await,
    }
}

async fn delete(
    call: Call<'_>,
    up: &Arc<Upstream>,
    ctx: &mut ReqCtx,
) -> Result<Response<Body>, GatewayError> {
    ctx.method = "DELETE";
    let session = call.session()?.ok_or(GatewayError::MissingSession)?;
    let resp = send_bodiless(&call, up, Method::DELETE, Some(&session)).await?;
    if resp.status().is_success() {
        call.gw
            .metrics
            .sessions
            .with_label_values(&["closed"])
            .inc();
    }
    passthrough(up, resp, &call.rt.limits).await
}

/// Sends a GET or DELETE to `up` under the upstream's part of `session`.
async fn send_bodiless(
    call: &Call<'_>,
    up: &Upstream,
    method: Method,
    session: Option<&SessionState>,
) -> Result<Response<UpstreamBody>, GatewayError> {
    let up_session = session_for(session, up)?;
    let req = upstream::upstream_request(
        up,
        method,
        call.headers.iter(),
        up_session.as_deref(),
        Bytes::new(),
    )?;
    call.gw
        .client
        .send(up, req, call.rt.limits.upstream_response_timeout)
        .await
}

fn session_for(
    session: Option<&SessionState>,
    up: &Upstream,
) -> Result<Option<String>, GatewayError> {
    match session {
        None => Ok(None),
        Some(s) => Ok(s
            .upstream(up.name.as_str())
            .ok_or(GatewayError::UnknownSession)?
            .session
            .clone()),
    }
}

/// Relays a short upstream answer (status, type, bounded body).
async fn passthrough(
    up: &Upstream,
    resp: Response<UpstreamBody>,
    limits: &crate::config::Limits,
) -> Result<Response<Body>, GatewayError> {
    let (parts, incoming) = resp.into_parts();
    if parts.status.is_server_error() {
        return Err(GatewayError::UpstreamBadResponse {
            upstream: up.name.to_string(),
            reason: format!("answered HTTP {}", parts.status),
        });
    }
    let bytes = upstream::read_json_body(up, incoming, limits).await?;
    let mut out = Response::new(body::full(bytes));
    *out.status_mut() = parts.status;
    copy_header(&parts.headers, out.headers_mut(), header::CONTENT_TYPE);
    copy_header(&parts.headers, out.headers_mut(), header::ALLOW);
    Ok(out)
}

pub fn pump_cfg(
    rt: &Runtime,
    up: &Upstream,
    end_on: Option<tokio_util::sync::CancellationToken>,
    key: Option<KeyWatch>,
) -> PumpConfig {
    PumpConfig {
        key,
        upstream: up.name.to_string(),
        max_event: rt.limits.max_sse_event_bytes,
        idle_timeout: rt.limits.stream_idle_timeout,
        keepalive: rt.limits.sse_keepalive_interval,
        end_on,
    }
}

pub fn sse_response(status: StatusCode, b: crate::body::ChannelBody) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(b.boxed())
        .expect("static response parts are valid")
}

pub fn status_only(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = status;
    r
}

fn copy_header(from: &http::HeaderMap, to: &mut http::HeaderMap, name: header::HeaderName) {
    if let Some(v) = from.get(&name) {
        to.insert(name, v.clone());
    }
}

fn count_upstream_error(ctx: &ReqCtx, gw: &Gateway, e: &GatewayError) {
    gw.metrics
        .upstream_errors
        .with_label_values(&[ctx.upstream(), e.reason()])
        .inc();
}

/// Keeps only granted tools in a `tools/list` result.
pub fn filter_tools(msg: &mut Value, filter: &ToolFilter) {
    if let Some(tools) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    {
        tools.retain(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| filter.allows(n))
        });
    }
}

/// A POST's SSE stream: filters the tool list if needed, and owes the client
/// an error response if the stream breaks before the answer.
struct PostStream {
    id: Option<Value>,
    filter: Option<ToolFilter>,
    /// The answer carries cache hints, kept private (`mcp::keep_private`).
    private: bool,
    /// A `subscriptions/listen` stream.
    listen: bool,
}

impl EventMap for PostStream {
    fn map(&mut self, mut ev: sse::Event) -> Vec<sse::Event> {
        if (self.filter.is_some() || self.private)
            && let Ok(mut v) = serde_json::from_str::<Value>(&ev.data)
            && v.get("id") == self.id.as_ref()
            && v.get("result").is_some()
        {
            if let Some(f) = &self.filter {
                filter_tools(&mut v, f);
            }
            mcp::keep_private(&mut v);
            ev.data = v.to_string();
        }
        vec![ev]
    }

    fn on_error(&mut self, err: &GatewayError) -> Option<sse::Event> {
        let id = self.id.as_ref()?;
        Some(sse::Event::message(err.rpc_response(Some(id)).to_string()))
    }

    fn on_drain(&mut self) -> Option<sse::Event> {
        let id = self.id.as_ref().filter(|_| self.listen)?;
        Some(sse::Event::message(mcp::listen_ended(id).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_lists_are_filtered() {
        let mut msg = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"rm"},{"name":"add"}]}});
        filter_tools(&mut msg, &ToolFilter::only(["echo", "add"]));
        let names: Vec<_> = msg["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("echo"), json!("add")]);
    }
}
