//! `/mcp`: every upstream the key may use, as one virtual MCP server.
//!
//! The gateway is the MCP server here: it initializes every granted upstream
//! with the client's own capabilities, merges their lists under unique names
//! (see `names`), routes each call to its upstream, and relays what the
//! upstreams send back (progress, logs, sampling, elicitation) with ids
//! rewritten so replies find their way home. All routing state travels in
//! the sealed session id and in the rewritten ids: no replica remembers
//! (the sessions `bridge` holds for 2026-07-28 clients are a cache).

mod bridge;
mod listen;
mod params;

pub use bridge::Bridges;

use std::{
    borrow::Cow,
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Map, Value, json};
use tokio::sync::{OnceCell, mpsc};

use crate::{
    body::{self, Body, ChannelBody},
    client::Outgoing,
    error::{GatewayError, code},
    gateway::{Call, ReqCtx, unix_now},
    headers::{Name, map_fields},
    mcp::{self, Kind, META_SERVER_INFO},
    metrics::GaugeGuard,
    model::{ToolFilter, Upstream},
    names,
    relay::{self, Failure, Parsed},
    session::{SessionState, UpstreamSession},
    sse,
    upstream::{self, EventMap, Payload},
};

/// Locks what `bridge` and `params` keep per replica (caches: a panic
/// elsewhere leaves nothing half-done that matters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One run per name at a time: callers that arrive while it runs wait for
/// it and share its result; the first caller after it ends runs anew.
struct SingleFlight<T>(Mutex<HashMap<String, Arc<OnceCell<T>>>>);

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight(Mutex::default())
    }
}

impl<T: Clone> SingleFlight<T> {
    async fn run<F: Future<Output = T>>(&self, name: &str, f: impl FnOnce() -> F) -> T {
        let cell = lock(&self.0).entry(name.to_owned()).or_default().clone();
        let out = cell.get_or_init(f).await.clone();
        let mut running = lock(&self.0);
        if running.get(name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            running.remove(name);
        }
        out
    }
}

/// One upstream as seen from this session.
#[derive(Clone)]
struct Target {
    up: Arc<Upstream>,
    filter: ToolFilter,
    session: Option<String>,
    version: String,
    /// The `_meta` a session-based client's requests gain for this upstream,
    /// which speaks only 2026-07-28 (`bridge`).
    meta: Option<Arc<Value>>,
}

/// The request's own method's future, boxed (as `relay::handle`).
pub fn handle<'r>(call: Call<'r>, ctx: &'r mut ReqCtx) -> relay::Handling<'r> {
    match call.method {
        Method::POST => Box::pin(post(call, ctx)),
        Method::GET => relay::without_id(get(call, ctx)),
        Method::DELETE => relay::without_id(delete(call, ctx)),
        ref m => relay::refused(m),
    }
}

async fn post(call: Call<'_>, ctx: &mut ReqCtx) -> Result<Response<Body>, Failure> {
    mcp::check_post_headers(call.headers).map_err(|e| (e, None))?;
    // The peek, borrowed from the body, stays in this block: it must not
    // keep its place in this future across the upstream call.
    let (kind, id, version, method, direct) = {
        let Parsed {
            peek,
            kind,
            id,
            version,
        } = relay::parse_post(call.headers, &call.body, ctx)?;
        let method = peek.method();
        let direct = if kind == Kind::Request && method == "tools/call" {
            direct_call(&call, &peek, version == mcp::STATELESS)
        } else {
            None
        };
        (kind, id, version, method.to_owned(), direct)
    };
    if let Some(d) = direct {
        let answered = call_tool(&call, d, id.clone(), ctx).await;
        return answered.map_err(|e| (e, id));
    }
    let fail = |e: GatewayError| (e, id.clone());
    let msg: Value =
        serde_json::from_slice(&call.body).map_err(|e| fail(GatewayError::Parse(e.to_string())))?;

    let stateless = version == mcp::STATELESS;
    if stateless
        && kind == Kind::Request
        && matches!(
            method.as_str(),
            "initialize"
                | "ping"
                | "logging/setLevel"
                | "resources/subscribe"
                | "resources/unsubscribe"
        )
    {
        return Err(fail(GatewayError::NoMethodStateless(method)));
    }
    if kind == Kind::Request && method == "initialize" {
        return initialize(&call, &msg, ctx).await.map_err(fail);
    }
    if kind == Kind::Request && method == "ping" {
        return Ok(body::json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        ));
    }
    let session = call.session().map_err(fail)?;
    if session.is_none() && version != mcp::STATELESS {
        return Err(fail(GatewayError::MissingSession));
    }
    let targets = targets(&call, session.as_deref(), &version);

    match kind {
        Kind::Notification => {
            notify_all(&call, &targets, &msg).await;
            Ok(relay::status_only(StatusCode::ACCEPTED))
        }
        Kind::Response => {
            let (up, orig) = msg.get("id").and_then(names::split_id).ok_or_else(|| {
                fail(GatewayError::InvalidRequest(
                    "response to an id this gateway never sent".into(),
                ))
            })?;
            let t = find(&targets, up).map_err(fail)?;
            let mut msg = msg.clone();
            msg["id"] = orig;
            let resp = send(&call, t, &msg, None).await.map_err(fail)?;
            Ok(relay::status_only(if resp.status().is_success() {
                StatusCode::ACCEPTED
            } else {
                resp.status()
            }))
        }
        Kind::Request => match method.as_str() {
            "server/discover" if stateless => discover(&call, &targets, &msg).await.map_err(fail),
            "subscriptions/listen" if stateless => {
                listen::listen(&call, &targets, &msg).await.map_err(fail)
            }
            "tools/list" => list(&call, &targets, &msg, List::Tools, stateless)
                .await
                .map_err(fail),
            "prompts/list" => list(&call, &targets, &msg, List::Prompts, stateless)
                .await
                .map_err(fail),
            "resources/list" => list(&call, &targets, &msg, List::Resources, stateless)
                .await
                .map_err(fail),
            "resources/templates/list" => list(&call, &targets, &msg, List::Templates, stateless)
                .await
                .map_err(fail),
            "logging/setLevel" => {
                notify_all(&call, &targets, &msg).await;
                Ok(body::json_response(
                    StatusCode::OK,
                    &json!({"jsonrpc": "2.0", "id": id, "result": {}}),
                ))
            }
            "tools/call"
            | "prompts/get"
            | "resources/read"
            | "resources/subscribe"
            | "resources/unsubscribe"
            | "completion/complete" => routed(&call, &targets, msg, &method, ctx)
                .await
                .map_err(fail),
            other if stateless => Err(fail(GatewayError::NoMethodStateless(other.to_owned()))),
            other => Err(fail(GatewayError::MethodNotFound(other.to_owned()))),
        },
    }
}

/// The upstreams of this session that the key may still use.
fn targets(call: &Call<'_>, session: Option<&SessionState>, version: &str) -> Vec<Target> {
    let snap = &call.rt.snapshot;
    let granted = call.key.grants.iter().filter_map(|(name, filter)| {
        let up = snap.upstreams.get(name)?;
        Some((up.clone(), filter.clone()))
    });
    match session {
        Some(s) => {
            let meta = bridge::stateless_meta(s);
            granted
                .filter_map(|(up, filter)| {
                    let us = s.upstream(up.name.as_str())?;
                    Some(Target {
                        up,
                        filter,
                        session: us.session.clone(),
                        version: us.version.clone(),
                        meta: (us.version == mcp::STATELESS)
                            .then(|| meta.clone())
                            .flatten(),
                    })
                })
                .collect()
        }
        None => granted
            .map(|(up, filter)| Target {
                up,
                filter,
                session: None,
                version: version.to_owned(),
                meta: None,
            })
            .collect(),
    }
}

/// The upstreams of the session a GET or DELETE names (it must name one).
fn session_targets(call: &Call<'_>) -> Result<Vec<Target>, GatewayError> {
    let version = mcp::request_version(call.headers)?;
    let session = call.session()?.ok_or(GatewayError::MissingSession)?;
    Ok(targets(call, Some(&session), &version))
}

/// The one target of a call that needs no bridge: what `targets` would
/// hold for `up`, without the others. With a session, its upstream
/// session must be of a session-based revision; without one, the client
/// speaks 2026-07-28 (whether the upstream does is the caller's to know).
fn direct_target(call: &Call<'_>, session: Option<&SessionState>, up: &str) -> Option<Target> {
    let (name, filter) = call.key.grants.get_key_value(up)?;
    let (session, version) = match session {
        Some(s) => {
            let us = s.upstream(name.as_str())?;
            if us.version == mcp::STATELESS {
                return None;
            }
            (us.session.clone(), us.version.clone())
        }
        None => (None, mcp::STATELESS.to_owned()),
    };
    Some(Target {
        up: call.rt.snapshot.upstreams.get(name)?.clone(),
        filter: filter.clone(),
        session,
        version,
        meta: None,
    })
}

fn find<'t>(targets: &'t [Target], up: &str) -> Result<&'t Target, GatewayError> {
    targets
        .iter()
        .find(|t| t.up.name.as_str() == up)
        .ok_or_else(|| GatewayError::NotGranted(format!("no upstream {up:?} in this session")))
}

/// Headers for a request the gateway makes to an upstream on the client's
/// behalf. A 2026-07-28 upstream is told `msg`'s method and name again in
/// headers.
fn headers_for(
    call: &Call<'_>,
    t: &Target,
    msg: Option<&Value>,
    last_event: Option<&str>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (id, _, v) in base_fields(call, t) {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.insert(HeaderName::from_static(id.as_str()), v);
        }
    }
    if t.version == mcp::STATELESS
        && let Some(msg) = msg
        && let Some(m) = msg.get("method").and_then(Value::as_str)
    {
        h.insert(mcp::HDR_METHOD, mcp::mirror_value(m));
        let p = &msg["params"];
        let target = match m {
            "tools/call" | "prompts/get" => p.get("name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => p.get("uri"),
            _ => None,
        };
        if let Some(v) = target.and_then(Value::as_str) {
            h.insert(mcp::HDR_NAME, mcp::mirror_value(v));
        }
        // Arguments a tool's schema mirrors into headers: a 2026-07-28
        // client sent them for the same schema (only the name is virtual).
        if m == "tools/call" && t.meta.is_none() {
            for (id, name, v) in call.headers.iter() {
                if id == Name::OTHER
                    && mcp::is_param_header(name)
                    && let (Ok(name), Ok(v)) =
                        (HeaderName::from_bytes(name), HeaderValue::from_bytes(v))
                {
                    h.append(name, v);
                }
            }
        }
    }
    if let Some(le) = last_event.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(mcp::HDR_LAST_EVENT, le);
    }
    h
}

/// The fields every request to an upstream on the client's behalf
/// carries: the gateway's own content type, accept and revision (the
/// upstream's), and the client's trace context and user agent.
fn base_fields<'a>(
    call: &'a Call<'_>,
    t: &'a Target,
) -> impl Iterator<Item = (Name, &'a [u8], &'a [u8])> + 'a {
    let version = t.version.as_bytes();
    let own = [
        (Name::CONTENT_TYPE, &b"application/json"[..]),
        (Name::ACCEPT, b"application/json, text/event-stream"),
        (Name::MCP_PROTOCOL_VERSION, version),
    ];
    let relayed = [Name::TRACEPARENT, Name::TRACESTATE, Name::USER_AGENT]
        .into_iter()
        .filter_map(|id| Some((id, call.headers.get(id)?)));
    own.into_iter()
        .filter(|(_, v)| !v.is_empty() && v.iter().all(|b| (b' '..=b'~').contains(b)))
        .chain(relayed)
        .map(|(id, v)| (id, id.as_str().as_bytes(), v))
}

/// Sends to an upstream as it must be spoken to: over a bridged session if
/// the client speaks 2026-07-28 and the upstream does not (`bridge`).
async fn send(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
    last_event: Option<&str>,
) -> Result<Response<crate::client::UpstreamBody>, GatewayError> {
    if let Some(meta) = &t.meta {
        // The arguments the tool's schema mirrors into headers.
        let params = if msg.get("method").is_some_and(|m| m == "tools/call") {
            params::for_call(call, t, msg).await
        } else {
            HeaderMap::new()
        };
        let msg = bridge::to_stateless(msg, meta);
        return send_with(call, t, &msg, last_event, params).await;
    }
    if bridge::speaks(call, t).await {
        return send_direct(call, t, msg, last_event).await;
    }
    // Boxed: bridged calls are the exception, and their future is twice
    // the size of the direct one.
    Box::pin(bridge::send(call, t, msg)).await
}

async fn send_direct(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
    last_event: Option<&str>,
) -> Result<Response<crate::client::UpstreamBody>, GatewayError> {
    send_with(call, t, msg, last_event, HeaderMap::new()).await
}

/// `send_direct`, with headers besides those of `headers_for`.
async fn send_with(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
    last_event: Option<&str>,
    extra: HeaderMap,
) -> Result<Response<crate::client::UpstreamBody>, GatewayError> {
    let (method, body) = if msg.is_null() {
        (Method::GET, Bytes::new())
    } else {
        (Method::POST, Bytes::from(msg.to_string()))
    };
    let safe = msg.get("id").is_some() && msg["method"].as_str().is_some_and(mcp::replay_safe);
    let req = {
        let mut headers = headers_for(call, t, Some(msg), last_event);
        headers.extend(extra);
        outgoing(t, method, map_fields(&headers), body, safe)?
    };
    send_out(call, t, req).await
}

/// A request to a target, of a body already written.
fn outgoing<'t, 'h>(
    t: &'t Target,
    method: Method,
    fields: impl IntoIterator<Item = (Name, &'h [u8], &'h [u8])>,
    body: Bytes,
    safe: bool,
) -> Result<Outgoing<'t>, GatewayError> {
    let req = upstream::upstream_request(&t.up, method, fields, t.session.as_deref(), body)?;
    Ok(req.replay_safe(safe))
}

async fn send_out(
    call: &Call<'_>,
    t: &Target,
    req: Outgoing<'_>,
) -> Result<Response<crate::client::UpstreamBody>, GatewayError> {
    call.gw
        .client
        .send(&t.up, req, call.rt.limits.upstream_response_timeout)
        .await
        .inspect_err(|e| count_error(call, t, e))
}

fn count_error(call: &Call<'_>, t: &Target, e: &GatewayError) {
    call.gw
        .metrics
        .upstream_errors
        .with_label_values(&[t.up.name.as_str(), e.reason()])
        .inc();
}

/// Sends a request and waits for its one response message.
async fn request(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
) -> Result<(Value, HeaderMap), GatewayError> {
    let resp = send(call, t, msg, None).await?;
    read_answer(call, t, msg, resp).await
}

/// `request`, to the target exactly as given (no bridge).
async fn request_direct(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
) -> Result<(Value, HeaderMap), GatewayError> {
    let resp = send_direct(call, t, msg, None).await?;
    read_answer(call, t, msg, resp).await
}

async fn read_answer(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
    mut resp: Response<crate::client::UpstreamBody>,
) -> Result<(Value, HeaderMap), GatewayError> {
    let _in_use = resp.extensions_mut().remove::<bridge::InUse>();
    let headers = resp.headers().clone();
    let payload = upstream::classify(&t.up, &resp)?;
    // Over a bridged session the request went under an id of the gateway's.
    let sent = resp
        .extensions()
        .get::<bridge::SentId>()
        .map(|s| s.0.clone());
    let id = sent.as_ref().or(msg.get("id"));
    let mut message = upstream::read_message(&t.up, resp, payload, id, &call.rt.limits).await?;
    if sent.is_some() {
        bridge::restore_id(&mut message);
    }
    Ok((message, headers))
}

async fn notify_all(call: &Call<'_>, targets: &[Target], msg: &Value) {
    let sends = targets.iter().map(|t| async move {
        if !bridge::speaks(call, t).await {
            // Notifications do not cross a bridge: they name requests or
            // state of the client's own, which the shared session has not.
            return;
        }
        match send(call, t, msg, None).await {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => tracing::debug!(upstream = %t.up.name, status = %resp.status(), "notification refused"),
            Err(e) => tracing::warn!(upstream = %t.up.name, "notification not delivered: {e}"),
        }
    });
    join_all(sends).await;
}

async fn initialize(
    call: &Call<'_>,
    msg: &Value,
    ctx: &mut ReqCtx,
) -> Result<Response<Body>, GatewayError> {
    let requested = msg
        .pointer("/params/protocolVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            GatewayError::InvalidParams("initialize needs params.protocolVersion".into())
        })?;
    let version = if mcp::is_supported(requested) {
        requested
    } else {
        mcp::LATEST
    };
    let mut init = msg.clone();
    init["params"]["protocolVersion"] = Value::String(version.to_owned());
    let targets = targets(call, None, version);
    let answers = join_all(targets.iter().map(|t| request(call, t, &init))).await;

    let mut caps = Map::new();
    let mut instructions = Vec::new();
    let mut sessions = Vec::new();
    let mut first_error = None;
    // Unreachable ones are not asked again below.
    let mut unreachable = Vec::new();
    for (t, answer) in targets.iter().zip(answers) {
        let (message, headers) = match answer {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(upstream = %t.up.name, "initialize failed: {e}");
                if matches!(
                    e,
                    GatewayError::UpstreamUnavailable { .. } | GatewayError::UpstreamTimeout { .. }
                ) {
                    unreachable.push(t.up.name.as_str());
                }
                first_error.get_or_insert(e);
                continue;
            }
        };
        let Some(result) = message.get("result") else {
            tracing::warn!(upstream = %t.up.name, error = %message["error"], "initialize refused");
            continue;
        };
        merge_capabilities(
            &mut caps,
            result.get("capabilities").unwrap_or(&Value::Null),
        );
        if let Some(text) = result.get("instructions").and_then(Value::as_str) {
            instructions.push(format!("[{}] {text}", t.up.name));
        }
        sessions.push(UpstreamSession {
            name: t.up.name.to_string(),
            session: headers
                .get(mcp::HDR_SESSION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            version: result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(version)
                .to_owned(),
        });
    }
    // Upstreams that refused `initialize` may speak only 2026-07-28: they
    // join the session without one of their own (`bridge`).
    let client_caps = bridge::crossing_caps(msg.pointer("/params/capabilities"));
    let refused: Vec<&Target> = targets
        .iter()
        .filter(|t| !sessions.iter().any(|s| s.name == t.up.name.as_str()))
        .filter(|t| !unreachable.contains(&t.up.name.as_str()))
        .collect();
    let modern = join_all(
        refused
            .iter()
            .map(|t| bridge::discover_stateless(call, t, &client_caps)),
    )
    .await;
    let mut any_modern = false;
    for (t, found) in refused.into_iter().zip(modern) {
        let Some(result) = found else { continue };
        any_modern = true;
        merge_capabilities(
            &mut caps,
            result.get("capabilities").unwrap_or(&Value::Null),
        );
        if let Some(text) = result.get("instructions").and_then(Value::as_str) {
            instructions.push(format!("[{}] {text}", t.up.name));
        }
        sessions.push(UpstreamSession {
            name: t.up.name.to_string(),
            session: None,
            version: mcp::STATELESS.to_owned(),
        });
    }
    if sessions.is_empty()
        && let Some(e) = first_error
    {
        return Err(e);
    }
    ctx.upstream = Some(
        sessions
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
            .into(),
    );
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": caps,
        "serverInfo": {"name": "stoa-gateway", "title": "STOA gateway", "version": env!("CARGO_PKG_VERSION")},
    });
    if !instructions.is_empty() {
        result["instructions"] = Value::String(instructions.join("\n"));
    }
    let state = SessionState {
        key: call.key.prefix.as_str().to_owned(),
        issued: unix_now(),
        version: version.to_owned(),
        upstreams: sessions,
        client_caps: any_modern.then_some(client_caps),
    };
    let mut resp = body::json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": msg["id"], "result": result}),
    );
    let sealed = call.rt.sessions.seal(&state);
    resp.headers_mut().insert(
        mcp::HDR_SESSION,
        HeaderValue::from_str(&sealed)
            .map_err(|_| GatewayError::Internal("sealed id is not a header value".into()))?,
    );
    call.gw
        .metrics
        .sessions
        .with_label_values(&["opened"])
        .inc();
    Ok(resp)
}

/// 2026-07-28 has no `initialize`: clients discover the virtual server.
async fn discover(
    call: &Call<'_>,
    targets: &[Target],
    msg: &Value,
) -> Result<Response<Body>, GatewayError> {
    let answers = join_all(targets.iter().map(|t| async move {
        // A bridged upstream told what it offers when its session opened.
        match bridge::capabilities(call, t).await? {
            Some(caps) => Ok((json!({"result": {"capabilities": caps}}), HeaderMap::new())),
            None => request(call, t, msg).await,
        }
    }))
    .await;
    // Change notifications come over `subscriptions/listen` (see `listen`):
    // list changes from the upstreams and from the key's grants, updates of
    // resources where some upstream sends them (`merge_capabilities`).
    let mut caps = Map::new();
    for (t, answer) in targets.iter().zip(answers) {
        match answer {
            Ok((m, _)) => merge_capabilities(
                &mut caps,
                m.pointer("/result/capabilities").unwrap_or(&Value::Null),
            ),
            Err(e) => tracing::warn!(upstream = %t.up.name, "server/discover failed: {e}"),
        }
    }
    let result = json!({
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "supportedVersions": [mcp::STATELESS, "2025-11-25", "2025-06-18"],
        "capabilities": caps,
        "_meta": {META_SERVER_INFO: server_info()},
    });
    Ok(body::json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": msg["id"], "result": result}),
    ))
}

/// The virtual server's name in 2026-07-28 results.
fn server_info() -> Value {
    json!({"name": "stoa-gateway", "version": env!("CARGO_PKG_VERSION")})
}

/// `server_info()` as JSON text (the package version needs no escapes).
const SERVER_INFO: &str = concat!(
    r#"{"name":"stoa-gateway","version":""#,
    env!("CARGO_PKG_VERSION"),
    r#""}"#
);

/// The union of what the upstreams offer.
fn merge_capabilities(into: &mut Map<String, Value>, caps: &Value) {
    let Some(caps) = caps.as_object() else { return };
    for (name, v) in caps {
        match name.as_str() {
            "tools" | "prompts" => {
                into.insert(name.clone(), json!({"listChanged": true}));
            }
            "resources" => {
                let subscribe = v.get("subscribe").and_then(Value::as_bool).unwrap_or(false)
                    || into
                        .get("resources")
                        .and_then(|r| r.get("subscribe"))
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                into.insert(
                    name.clone(),
                    json!({"listChanged": true, "subscribe": subscribe}),
                );
            }
            "logging" | "completions" => {
                into.insert(name.clone(), json!({}));
            }
            _ => {}
        }
    }
}

#[derive(Clone, Copy)]
enum List {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl List {
    fn field(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources => "resources",
            List::Templates => "resourceTemplates",
        }
    }
}

/// Pages the gateway follows per upstream when merging a list.
const MAX_PAGES: usize = 64;

async fn list(
    call: &Call<'_>,
    targets: &[Target],
    msg: &Value,
    kind: List,
    stateless: bool,
) -> Result<Response<Body>, GatewayError> {
    let per_upstream = join_all(targets.iter().map(|t| list_one(call, t, msg, kind))).await;
    let mut items = Vec::new();
    let mut failures = 0;
    let mut last_error = None;
    for (t, r) in targets.iter().zip(per_upstream) {
        match r {
            Ok(list) => items.extend(list),
            Err(e) => {
                failures += 1;
                tracing::warn!(upstream = %t.up.name, "{} failed: {e}", kind.field());
                last_error = Some(e);
            }
        }
    }
    if failures > 0
        && failures == targets.len()
        && let Some(e) = last_error
    {
        return Err(e);
    }
    let mut result = Map::new();
    result.insert(kind.field().to_owned(), Value::Array(items));
    if stateless {
        // A merged list is specific to the caller's grants: never shared.
        result.insert("resultType".into(), json!("complete"));
        result.insert("ttlMs".into(), json!(0));
        result.insert("cacheScope".into(), json!("private"));
        result.insert("_meta".into(), json!({META_SERVER_INFO: server_info()}));
    }
    Ok(body::json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": msg["id"], "result": result}),
    ))
}

async fn list_one(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
    kind: List,
) -> Result<Vec<Value>, GatewayError> {
    let method = msg["method"].as_str().unwrap_or_default();
    let up = t.up.name.as_str();
    let mut out = Vec::new();
    let params = msg.get("params").and_then(Value::as_object);
    for mut item in pages(call, t, method, params, kind.field()).await? {
        let (field, renamed) = match kind {
            List::Tools | List::Prompts => {
                let Some(name) = item.get("name").and_then(Value::as_str) else {
                    continue;
                };
                if matches!(kind, List::Tools) && !t.filter.allows(name) {
                    continue;
                }
                ("name", names::virtual_name(up, name))
            }
            List::Resources | List::Templates => {
                let field = if matches!(kind, List::Resources) {
                    "uri"
                } else {
                    "uriTemplate"
                };
                let Some(uri) = item.get(field).and_then(Value::as_str) else {
                    continue;
                };
                (field, names::virtual_uri(up, uri))
            }
        };
        item[field] = Value::String(renamed);
        out.push(item);
    }
    Ok(out)
}

/// Every item of one upstream's list, following `nextCursor` (bounded).
/// An upstream without the feature contributes nothing. The tools of one
/// that speaks only 2026-07-28, reached by a session-based client, are
/// remembered for the headers their calls need (`params`).
async fn pages(
    call: &Call<'_>,
    t: &Target,
    method: &str,
    client_params: Option<&Map<String, Value>>,
    field: &str,
) -> Result<Vec<Value>, GatewayError> {
    let items = all_pages(call, t, method, client_params, field).await?;
    if t.meta.is_some() && method == "tools/list" {
        call.gw.bridges.schemas.learn(&t.up, &items);
    }
    Ok(items)
}

async fn all_pages(
    call: &Call<'_>,
    t: &Target,
    method: &str,
    client_params: Option<&Map<String, Value>>,
    field: &str,
) -> Result<Vec<Value>, GatewayError> {
    let mut out = Vec::new();
    let mut cursor: Option<Value> = None;
    // The client's params go along (its `_meta`: the 2026-07-28 revision
    // carries the protocol version and client capabilities there on every
    // request), but for its cursor, which names a page of the merged list,
    // and its progress token, which names the client's one request, not
    // each upstream's pages.
    let mut params = client_params.cloned().unwrap_or_default();
    params.remove("cursor");
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        meta.remove("progressToken");
    }
    for page in 0..MAX_PAGES {
        let mut req =
            json!({"jsonrpc": "2.0", "id": format!("stoa-list-{page}"), "method": method});
        if let Some(c) = &cursor {
            params.insert("cursor".into(), c.clone());
        }
        if !params.is_empty() {
            req["params"] = Value::Object(params.clone());
        }
        let (answer, _) = request(call, t, &req).await?;
        if let Some(err) = answer.get("error") {
            if err.get("code").and_then(Value::as_i64) == Some(code::METHOD_NOT_FOUND) {
                return Ok(out);
            }
            return Err(GatewayError::refused_by(t.up.name.as_str(), method, err));
        }
        let mut result = answer.get("result").cloned().unwrap_or_default();
        if let Some(items) = result.get_mut(field).and_then(Value::as_array_mut) {
            out.append(items);
        }
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => return Ok(out),
        }
    }
    Ok(out)
}

/// A request for one upstream: find it from the virtual name, restore the
/// upstream's own name, forward, and relay the answer.
async fn routed(
    call: &Call<'_>,
    targets: &[Target],
    mut msg: Value,
    method: &str,
    ctx: &mut ReqCtx,
) -> Result<Response<Body>, GatewayError> {
    // A shortened name is found by listing its upstream, with the client's
    // `_meta` (2026-07-28 needs it on every request; `pages` drops what
    // belongs to this request only).
    let lookup: Option<Map<String, Value>> = msg
        .get("params")
        .and_then(|p| p.get("_meta"))
        .map(|meta| Map::from_iter([("_meta".to_owned(), meta.clone())]));
    let params = msg
        .get_mut("params")
        .ok_or_else(|| GatewayError::InvalidParams(format!("{method} needs params")))?;
    let t = match method {
        "tools/call" | "prompts/get" => {
            let v = params.get("name").and_then(Value::as_str).ok_or_else(|| {
                GatewayError::InvalidParams(format!("{method} needs params.name"))
            })?;
            let (t, name) = resolve_name(call, targets, v, method, lookup.as_ref()).await?;
            if method == "tools/call" {
                ctx.tool = Some(name.clone());
                if !t.filter.allows(&name) {
                    call.gw.metrics.tool_refused(
                        t.up.name.as_str(),
                        &name,
                        call.memo.map(|m| &m.tool_calls),
                    );
                    return Err(GatewayError::NotGranted(format!(
                        "tool {v:?} is not granted to this key"
                    )));
                }
            }
            params["name"] = Value::String(name);
            t
        }
        "completion/complete" => {
            let r = params.get_mut("ref").ok_or_else(|| {
                GatewayError::InvalidParams("completion/complete needs params.ref".into())
            })?;
            if let Some(v) = r.get("name").and_then(Value::as_str).map(str::to_owned) {
                let (t, name) =
                    resolve_name(call, targets, &v, "prompts/get", lookup.as_ref()).await?;
                r["name"] = Value::String(name);
                t
            } else {
                let v = r.get("uri").and_then(Value::as_str).ok_or_else(|| {
                    GatewayError::InvalidParams("params.ref needs name or uri".into())
                })?;
                let (up, uri) = names::split_uri(v).ok_or_else(|| {
                    GatewayError::InvalidParams(format!("unknown resource {v:?}"))
                })?;
                let t = find(targets, up)?.clone();
                r["uri"] = Value::String(uri.to_owned());
                t
            }
        }
        _ => {
            let v = params
                .get("uri")
                .and_then(Value::as_str)
                .ok_or_else(|| GatewayError::InvalidParams(format!("{method} needs params.uri")))?;
            let (up, uri) = names::split_uri(v)
                .ok_or_else(|| GatewayError::InvalidParams(format!("unknown resource {v:?}")))?;
            let t = find(targets, up)?.clone();
            params["uri"] = Value::String(uri.to_owned());
            t
        }
    };
    ctx.upstream = Some(t.up.name.shared());
    let resp = send(call, &t, &msg, None).await?;
    answer(call, &t, resp, msg.get("id").cloned(), ctx).await
}

/// A `tools/call` sent upstream as the client's bytes, the virtual tool
/// name cut to the upstream's own: most calls through `/mcp`, relayed
/// without building the request or its answer as values.
struct Direct {
    t: Target,
    tool: String,
    body: Bytes,
}

/// The call as `Direct`, if nothing about it needs the message as a
/// value: a tool name without escapes that is not shortened, a tool the
/// key may use, and no bridge: an upstream session of a session-based
/// revision, or for a 2026-07-28 client without a session, an upstream
/// known to speak that revision. Every other call, and every refusal,
/// takes `routed`'s way.
fn direct_call(call: &Call<'_>, peek: &mcp::Peek<'_>, stateless: bool) -> Option<Direct> {
    let Some(Cow::Borrowed(name)) = &peek.params.as_ref()?.name else {
        return None;
    };
    let (up, tool, true) = names::split_name(name)? else {
        return None;
    };
    let session = call.session().ok()?;
    if session.is_none() && !stateless {
        return None;
    }
    let t = direct_target(call, session.as_deref(), up)?;
    if session.is_none() && call.gw.bridges.era(&t) != Some(true) {
        return None;
    }
    if !t.filter.allows(tool) {
        return None;
    }
    // The name is borrowed from the body: cut its upstream's part there.
    let b = &call.body[..];
    let at = (name.as_ptr() as usize).checked_sub(b.as_ptr() as usize)?;
    if b.get(at..at + name.len())? != name.as_bytes() {
        return None;
    }
    let cut = name.len() - tool.len();
    Some(Direct {
        tool: tool.to_owned(),
        body: Bytes::from([&b[..at], &b[at + cut..]].concat()),
        t,
    })
}

async fn call_tool(
    call: &Call<'_>,
    d: Direct,
    id: Option<Value>,
    ctx: &mut ReqCtx,
) -> Result<Response<Body>, GatewayError> {
    let Direct { t, tool, body } = d;
    ctx.upstream = Some(t.up.name.shared());
    // In a block: what the fields borrow is not kept across the call.
    let req = {
        // What `headers_for` adds for a 2026-07-28 upstream: the method
        // and the upstream's own tool name again, and the arguments the
        // client mirrored.
        let stateless = t.version == mcp::STATELESS;
        let name = stateless.then(|| mcp::mirror_value(&tool));
        ctx.tool = Some(tool);
        let mirrored = name.iter().flat_map(|n| {
            [
                (Name::MCP_METHOD, &b"tools/call"[..]),
                (Name::MCP_NAME, n.as_bytes()),
            ]
            .map(|(id, v)| (id, id.as_str().as_bytes(), v))
        });
        let params = call
            .headers
            .iter()
            .filter(|(id, raw, _)| stateless && *id == Name::OTHER && mcp::is_param_header(raw));
        let fields = base_fields(call, &t).chain(mirrored).chain(params);
        outgoing(
            &t,
            Method::POST,
            fields,
            body,
            mcp::replay_safe("tools/call"),
        )?
    };
    let resp = send_out(call, &t, req).await?;
    answer(call, &t, resp, id, ctx).await
}

/// Relays one upstream's answer to a request routed to it, as the virtual
/// server's answer to `request_id`.
async fn answer(
    call: &Call<'_>,
    t: &Target,
    mut resp: Response<crate::client::UpstreamBody>,
    request_id: Option<Value>,
    ctx: &ReqCtx,
) -> Result<Response<Body>, GatewayError> {
    // Over a bridged session: held while the answer is read.
    let in_use = resp.extensions_mut().remove::<bridge::InUse>();
    let bridged = resp.extensions().get::<bridge::SentId>().is_some();
    let payload = upstream::classify(&t.up, &resp).inspect_err(|e| count_error(call, t, e))?;
    if let Some(tool) = &ctx.tool {
        call.gw.metrics.tool_relayed(
            t.up.name.as_str(),
            tool,
            resp.status(),
            call.memo.map(|m| &m.tool_calls),
        );
    }
    let status = resp.status();
    let map = Rewrite {
        upstream: t.up.name.shared(),
        request_id,
        // The client's revision (a session-based client's 2026 members
        // carry `meta`).
        stateless: t.version == mcp::STATELESS && t.meta.is_none(),
        bridged,
    };
    match payload {
        Payload::Empty => Ok(relay::status_only(status)),
        Payload::Json => {
            let text = upstream::read_json_body(&t.up, resp.into_body(), &call.rt.limits).await?;
            drop(in_use);
            let text = match map.as_text(text) {
                Ok(out) => return Ok(body::json_bytes(status, out)),
                Err(text) => text,
            };
            let mut v = upstream::parse_json(&t.up, &text)?;
            map.message(&mut v);
            Ok(body::json_response(status, &v))
        }
        Payload::Sse => {
            let guard =
                GaugeGuard::new(call.gw.metrics.active_streams.with_label_values(&["post"]));
            let cfg = relay::pump_cfg(call.rt, &t.up, None, Some(call.gw.watch_key(call.key)));
            Ok(relay::sse_response(
                status,
                upstream::spawn_pump(resp.into_body(), map, cfg, (guard, in_use)),
            ))
        }
    }
}

/// Finds the upstream and original name behind a virtual tool or prompt name.
async fn resolve_name(
    call: &Call<'_>,
    targets: &[Target],
    v: &str,
    method: &str,
    params: Option<&Map<String, Value>>,
) -> Result<(Target, String), GatewayError> {
    let unknown = || GatewayError::InvalidParams(format!("unknown name {v:?}"));
    let (up, rest, exact) = names::split_name(v).ok_or_else(unknown)?;
    let t = find(targets, up).map_err(|_| unknown())?.clone();
    if exact {
        return Ok((t, rest.to_owned()));
    }
    // A shortened name: list the upstream and find the one it stands for.
    let list_method = if method == "tools/call" {
        "tools/list"
    } else {
        "prompts/list"
    };
    let field = if method == "tools/call" {
        "tools"
    } else {
        "prompts"
    };
    let full = pages(call, &t, list_method, params, field).await?;
    let name = full
        .iter()
        .filter_map(|item| item.get("name").and_then(Value::as_str))
        .find(|n| names::virtual_name(up, n) == v)
        .ok_or_else(unknown)?
        .to_owned();
    Ok((t, name))
}

/// Rewrites what one upstream sends so the client sees the virtual server.
struct Rewrite {
    upstream: Arc<str>,
    /// The client's request this stream answers (POST streams).
    request_id: Option<Value>,
    /// The client speaks 2026-07-28: every result names its type and the
    /// virtual server, whatever revision the upstream answered in.
    stateless: bool,
    /// Answers come over a bridged session, under ids of the gateway's.
    bridged: bool,
}

impl Rewrite {
    /// A whole answer's text as `message` would write it, made by
    /// splicing where that is plain: the virtual server's name in place of
    /// the upstream's, and for a 2026-07-28 client the result's type and
    /// that name added where missing. `Err` gives the text back for
    /// `message`.
    fn as_text(&self, text: Bytes) -> Result<Bytes, Bytes> {
        let shape = match mcp::answer_shape(&text) {
            Some(s) if !(self.bridged || s.method || s.cache_scope || s.contents) => s,
            _ => return Err(text),
        };
        // (where, how many bytes are cut there, what goes in), in order.
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        if self.stateless
            && let Some(result) = &shape.result
        {
            let info = format!("\"{META_SERVER_INFO}\":{SERVER_INFO}");
            // Members put first in the result.
            let mut head = Vec::new();
            if !shape.result_type {
                head.push(r#""resultType":"complete""#.to_owned());
            }
            if shape.meta.is_none() {
                head.push(format!(r#""_meta":{{{info}}}"#));
            }
            if !head.is_empty() {
                let mut head = head.join(",");
                if !result.empty {
                    head.push(',');
                }
                edits.push((result.at, 0, head));
            }
            if let (Some(Some(meta)), None) = (&shape.meta, &shape.server_info) {
                let comma = if meta.empty { "" } else { "," };
                edits.push((meta.at, 0, info + comma));
            }
        }
        // The upstream's name, inside the result: after any edit above.
        if let Some(span) = &shape.server_info {
            edits.push((span.start, span.len(), SERVER_INFO.into()));
        }
        if edits.is_empty() {
            return Ok(text);
        }
        let mut out = Vec::with_capacity(text.len() + 160);
        let mut from = 0;
        for (at, cut, put) in &edits {
            out.extend_from_slice(&text[from..*at]);
            out.extend_from_slice(put.as_bytes());
            from = at + cut;
        }
        out.extend_from_slice(&text[from..]);
        Ok(out.into())
    }

    fn message(&self, v: &mut Value) {
        let up = &*self.upstream;
        let is_request = v.get("method").is_some() && v.get("id").is_some();
        if is_request {
            // A server-to-client request (sampling, elicitation, roots):
            // tag its id so the client's reply can be routed back.
            let id = v["id"].clone();
            v["id"] = names::virtual_id(up, &id);
            return;
        }
        match v.get("method").and_then(Value::as_str) {
            Some("notifications/resources/updated") => {
                if let Some(uri) = v
                    .get("params")
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                {
                    v["params"]["uri"] = Value::String(names::virtual_uri(up, uri));
                }
            }
            Some("notifications/cancelled") => {
                if let Some(id) = v.get("params").and_then(|p| p.get("requestId")).cloned() {
                    v["params"]["requestId"] = names::virtual_id(up, &id);
                }
            }
            Some(_) => {}
            None => {
                if self.bridged {
                    bridge::restore_id(v);
                }
                mcp::keep_private(v);
                // A 2026-07-28 result names its server: here, the virtual one.
                if self.stateless
                    && let Some(r) = v.get_mut("result").and_then(Value::as_object_mut)
                {
                    r.entry("resultType").or_insert_with(|| json!("complete"));
                    let meta = r.entry("_meta").or_insert_with(|| json!({}));
                    if let Some(m) = meta.as_object_mut() {
                        m.insert(META_SERVER_INFO.into(), server_info());
                    }
                } else if let Some(info) = v
                    .get_mut("result")
                    .and_then(|r| r.get_mut("_meta"))
                    .and_then(|m| m.get_mut(META_SERVER_INFO))
                {
                    *info = server_info();
                }
                // A response: URIs it returns must be virtual too.
                if let Some(contents) = v
                    .get_mut("result")
                    .and_then(|r| r.get_mut("contents"))
                    .and_then(Value::as_array_mut)
                {
                    for c in contents {
                        if let Some(uri) = c.get("uri").and_then(Value::as_str) {
                            c["uri"] = Value::String(names::virtual_uri(up, uri));
                        }
                    }
                }
            }
        }
    }
}

impl EventMap for Rewrite {
    fn map(&mut self, mut ev: sse::Event) -> Vec<sse::Event> {
        if let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) {
            self.message(&mut v);
            ev.data = v.to_string();
        }
        if let Some(id) = &ev.id {
            ev.id = Some(names::virtual_event_id(&self.upstream, id));
        }
        vec![ev]
    }

    fn on_error(&mut self, err: &GatewayError) -> Option<sse::Event> {
        let id = self.request_id.as_ref()?;
        Some(sse::Event::message(err.rpc_response(Some(id)).to_string()))
    }
}

/// One stream merged from every upstream's GET stream.
async fn get(call: Call<'_>, ctx: &mut ReqCtx) -> Result<Response<Body>, GatewayError> {
    ctx.method = "GET";
    if !mcp::accepts(call.headers, "text/event-stream") {
        return Err(GatewayError::NotAcceptable);
    }
    let targets = session_targets(&call)?;
    let last = call
        .headers
        .get_str(Name::LAST_EVENT_ID)
        .and_then(names::split_event_id);
    let listen = listen_for_get_stream();
    let opened = join_all(targets.iter().map(|t| {
        if t.meta.is_some() {
            // A member that speaks only 2026-07-28 has no GET stream: its
            // change notifications come over a listen stream (`bridge`).
            return send(&call, t, &listen, None);
        }
        let le = last
            .filter(|(up, _)| *up == t.up.name.as_str())
            .map(|(_, id)| id);
        send(&call, t, &Value::Null, le)
    }))
    .await;
    let (tx, rx) = mpsc::channel(16);
    let mut streams = 0;
    // Cancelled once every feed has ended (each holds a clone of the guard).
    let feeds_ended = tokio_util::sync::CancellationToken::new();
    let feeds = Arc::new(feeds_ended.clone().drop_guard());
    for (t, r) in targets.iter().zip(opened) {
        match r {
            Ok(resp)
                if resp.status().is_success()
                    && matches!(upstream::classify(&t.up, &resp), Ok(Payload::Sse)) =>
            {
                streams += 1;
                let map = Rewrite {
                    upstream: t.up.name.shared(),
                    request_id: None,
                    stateless: false,
                    bridged: false,
                };
                let cfg = relay::pump_cfg(
                    call.rt,
                    &t.up,
                    Some(call.gw.draining.clone()),
                    Some(call.gw.watch_key(call.key)),
                );
                let body = resp.into_body();
                if t.meta.is_some() {
                    let map = Listened(map);
                    upstream::spawn_pump_into(body, map, cfg, feeds.clone(), tx.clone());
                } else {
                    upstream::spawn_pump_into(body, map, cfg, feeds.clone(), tx.clone());
                }
            }
            Ok(resp) => {
                tracing::debug!(upstream = %t.up.name, status = %resp.status(), "no GET stream")
            }
            Err(e) => tracing::warn!(upstream = %t.up.name, "GET stream failed: {e}"),
        }
    }
    if streams == 0 {
        return Err(GatewayError::MethodNotAllowed(Method::GET));
    }
    drop(feeds);
    tokio::spawn(signal_regrants(
        call.gw.watch_key(call.key),
        tx,
        feeds_ended,
    ));
    let guard = GaugeGuard::new(call.gw.metrics.active_streams.with_label_values(&["get"]));
    let body = GuardedBody {
        inner: ChannelBody::new(rx),
        _guard: guard,
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(http_body_util::BodyExt::boxed(body))
        .expect("static response parts are valid"))
}

/// What a session-based client's GET stream asks a 2026-07-28 member for:
/// the list changes its GET stream would carry.
fn listen_for_get_stream() -> Value {
    json!({"jsonrpc": "2.0", "id": "stoa-get-stream", "method": "subscriptions/listen",
    "params": {"notifications": {
        "toolsListChanged": true, "promptsListChanged": true, "resourcesListChanged": true,
    }}})
}

/// A 2026-07-28 member's listen stream, as a session-based client's GET
/// stream carries it: its notifications, without the subscription's
/// acknowledgement, tag or final result.
struct Listened(Rewrite);

impl EventMap for Listened {
    fn map(&mut self, ev: sse::Event) -> Vec<sse::Event> {
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            return Vec::new();
        };
        let relayed = v.get("id").is_none()
            && v.get("method")
                .and_then(Value::as_str)
                .is_some_and(|m| m != "notifications/subscriptions/acknowledged");
        if !relayed {
            return Vec::new();
        }
        if let Some(meta) = v
            .pointer_mut("/params/_meta")
            .and_then(Value::as_object_mut)
        {
            meta.remove(mcp::META_SUBSCRIPTION);
        }
        self.0.message(&mut v);
        vec![sse::Event::message(v.to_string())]
    }

    fn on_error(&mut self, _: &GatewayError) -> Option<sse::Event> {
        None
    }
}

/// The virtual server's lists follow the key's grants: say so on the
/// session's GET stream when they change. Ends with the stream's feeds.
async fn signal_regrants(
    mut key: crate::gateway::KeyWatch,
    tx: upstream::FrameSender,
    feeds_ended: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            standing = key.changed() => {
                if standing != crate::gateway::Standing::Regranted {
                    // Revoked: the feeds end themselves, and so this.
                    continue;
                }
                for list in ["tools", "prompts", "resources"] {
                    let note = json!({"jsonrpc": "2.0", "method": format!("notifications/{list}/list_changed")});
                    let frame = http_body::Frame::data(sse::Event::message(note.to_string()).encode());
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
            }
            () = feeds_ended.cancelled() => return,
            () = tx.closed() => return,
        }
    }
}

/// A body that holds a gauge up for as long as the client reads it.
struct GuardedBody {
    inner: ChannelBody,
    _guard: GaugeGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = body::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}

async fn delete(call: Call<'_>, ctx: &mut ReqCtx) -> Result<Response<Body>, GatewayError> {
    ctx.method = "DELETE";
    let targets = session_targets(&call)?;
    let closes = join_all(
        targets
            .iter()
            .filter(|t| t.session.is_some())
            .map(|t| async {
                let headers = headers_for(&call, t, None, None);
                let req = upstream::upstream_request(
                    &t.up,
                    Method::DELETE,
                    map_fields(&headers),
                    t.session.as_deref(),
                    Bytes::new(),
                )?;
                call.gw
                    .client
                    .send(&t.up, req, call.rt.limits.upstream_response_timeout)
                    .await
            }),
    )
    .await;
    for r in closes {
        if let Err(e) = r {
            tracing::warn!("closing an upstream session failed: {e}");
        }
    }
    call.gw
        .metrics
        .sessions
        .with_label_values(&["closed"])
        .inc();
    Ok(relay::status_only(StatusCode::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_merged() {
        let mut caps = Map::new();
        merge_capabilities(
            &mut caps,
            &json!({"tools": {}, "resources": {"subscribe": true}}),
        );
        merge_capabilities(
            &mut caps,
            &json!({"prompts": {}, "resources": {}, "logging": {}, "experimental": {"x": 1}}),
        );
        assert_eq!(
            Value::Object(caps),
            json!({"tools": {"listChanged": true}, "prompts": {"listChanged": true},
                   "resources": {"listChanged": true, "subscribe": true}, "logging": {}})
        );
    }

    #[test]
    fn upstream_messages_are_rewritten() {
        let r = Rewrite {
            upstream: "ev".into(),
            request_id: Some(json!(1)),
            stateless: false,
            bridged: false,
        };
        let mut sampling =
            json!({"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}});
        r.message(&mut sampling);
        assert_eq!(sampling["id"], json!("stoa:ev:0"));
        let mut updated = json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://x"}});
        r.message(&mut updated);
        assert_eq!(updated["params"]["uri"], json!("stoa://ev/test://x"));
        let mut read =
            json!({"jsonrpc":"2.0","id":1,"result":{"contents":[{"uri":"test://x","text":"hi"}]}});
        r.message(&mut read);
        assert_eq!(
            read["result"]["contents"][0]["uri"],
            json!("stoa://ev/test://x")
        );
        let mut progress = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}});
        let before = progress.clone();
        r.message(&mut progress);
        assert_eq!(progress, before, "progress tokens belong to the client");
    }

    /// An answer relayed as text reads as the value `message` makes of it,
    /// for either kind of client; an answer it would change otherwise is
    /// left to `message`.
    #[test]
    fn answers_as_text_read_as_the_rewrite_writes_them() {
        let rewrite = |stateless, bridged| Rewrite {
            upstream: "ev".into(),
            request_id: Some(json!(1)),
            stateless,
            bridged,
        };
        let texts = [
            r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#,
            r#" {"result" : {"content":[], "isError":false}, "id":"x" , "jsonrpc":"2.0"} "#,
            r#"{"jsonrpc":"2.0","id":1,"result":{ }}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"incomplete","x":[1,{"y":null}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"cacheScope"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"contents":1,"cacheScope":"public"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":"not an object"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"cacheScop":1,"_met":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"a":{"b":[1]}}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":"not an object"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"cacheScope":"public"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"contents":[{"uri":"test://x"}]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{"_meta":{"io.modelcontextprotocol/serverInfo":{}}}}"#,
            r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#,
            r#"{"result":{"_meta":{ },"x":1},"id":1,"jsonrpc":"2.0"}"#,
            r#"{"id":1,"result":{"resultType":"complete","content":[],"_meta":{"k":[2],"io.modelcontextprotocol/serverInfo" : {"name":"up","version":"1"} ,"z":{}}}}"#,
        ];
        let mut as_text = 0;
        for text in texts {
            for stateless in [false, true] {
                let r = rewrite(stateless, false);
                let mut want: Value = serde_json::from_str(text).unwrap();
                let before = want.clone();
                r.message(&mut want);
                match r.as_text(Bytes::from(text)) {
                    Ok(out) => {
                        as_text += 1;
                        let got: Value = serde_json::from_slice(&out)
                            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
                        assert_eq!(got, want, "{text} (stateless: {stateless})");
                    }
                    Err(back) => {
                        assert_eq!(back, text, "given back whole");
                        // Only what `message` changes goes to it.
                        assert_ne!(want, before, "{text} (stateless: {stateless})");
                    }
                }
            }
        }
        assert_eq!(as_text, 2 * 13, "how many went as text");
        // Not JSON, or a member given twice (a parser into values takes
        // the last): the general way, which parses and names the error.
        let r = rewrite(false, false);
        for text in [
            "<html",
            r#"{"id":1,"result":{}"#,
            r#"{"id":1,"result":{},"result":{"cacheScope":"public"}}"#,
            r#"{"id":1,"result":{"_meta":{}, "_meta":{"io.modelcontextprotocol/serverInfo":{}}}}"#,
        ] {
            assert!(r.as_text(Bytes::from(text)).is_err(), "{text}");
        }
        let not_utf8 = Bytes::from_static(b"{\"id\":1,\"result\":{\"t\":\"\xff\"}}");
        assert!(r.as_text(not_utf8).is_err(), "not UTF-8");
        // Over a bridge, ids change: always by value.
        assert!(rewrite(false, true).as_text(Bytes::from(texts[0])).is_err());
        assert_eq!(
            server_info(),
            serde_json::from_str::<Value>(SERVER_INFO).unwrap()
        );
    }
}
