//! `/mcp` across protocol revisions: a 2026-07-28 client over an upstream
//! that speaks only the session-based ones, and the other way round.
//!
//! The client has no session; such an upstream needs one. Each replica
//! opens one upstream session per (key, upstream) when first needed and
//! keeps it while it is used (`limits.bridged_session_idle_timeout`, at most
//! `limits.max_bridged_sessions`). It is a cache, not state the client
//! relies on: another replica opens its own, and a session the upstream has
//! forgotten (404, or a 400 that says so) is opened again, once; one that
//! is dropped is closed (DELETE) once no request uses it. Every client of
//! the key shares the session, under request ids of the gateway's. Whether
//! an upstream speaks 2026-07-28 is learnt by a `server/discover` and
//! remembered a few minutes.
//!
//! Requests lose the 2026-07-28 `_meta` keys; results gain what that
//! revision requires (`Rewrite` in `aggregate.rs`). What does not cross:
//! requests from the upstream to the client (sampling, elicitation, roots),
//! which 2026-07-28 carries as `input_required` results the gateway could
//! not resume; so the gateway declares no client capabilities to the
//! upstream. Change notifications of such an upstream (its GET stream) do
//! not reach `subscriptions/listen` either.
//!
//! The other way round, a session-based client's `initialize` reaches an
//! upstream that refuses it; if its `server/discover` names 2026-07-28, it
//! joins the session without a session of its own (the sealed session id
//! records it, and the client's capabilities), and each request to it gains
//! that revision's `_meta` and mirrored headers (`Mcp-Param-*` from the
//! tool's input schema, `params`). The capabilities it is
//! told of leave out sampling, elicitation and roots: its `input_required`
//! rounds cannot be turned into requests to the client. The session's GET
//! stream carries its list changes, from a listen stream (`Listened` in
//! `aggregate.rs`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{SingleFlight, Target, lock, read_answer, request_direct, send_direct};
use crate::{
    client::UpstreamBody, error::GatewayError, gateway::Call, mcp, model::Upstream,
    session::SessionState, upstream,
};

/// How long what an upstream speaks is remembered.
const ERA_TTL: Duration = Duration::from_secs(300);
/// Ids of requests sent over a bridged session: `stoa-bridge:<n>:<the
/// client's id as JSON>`. Every client of a key shares the session, so their
/// ids must not meet there.
const ID_PREFIX: &str = "stoa-bridge:";

/// What this replica knows of upstreams for bridging.
#[derive(Default)]
pub struct Bridges {
    /// Upstream name → what it speaks, as learnt.
    eras: Mutex<HashMap<String, Era>>,
    /// The probe in flight per upstream, if any.
    probes: SingleFlight<Option<bool>>,
    /// (key prefix, upstream name) → its session, opened once however many
    /// requests need it at the same time.
    sessions: Mutex<HashMap<(String, String), Slot>>,
    next_id: AtomicU64,
    /// What 2026-07-28-only upstreams' tools mirror into `Mcp-Param-*`.
    pub(super) schemas: super::params::Schemas,
}

struct Era {
    url: http::Uri,
    stateless: bool,
    at: Instant,
}

/// The outcome of opening a session, shared by every request that waited.
type Opened = Result<Open, Arc<GatewayError>>;

struct Slot {
    cell: Arc<OnceCell<Opened>>,
    used: Instant,
    /// One clone per request using the session (`InUse`), and this one.
    users: Arc<()>,
}

/// A session no longer in the cache, to close once nothing uses it.
type Dropped = (Open, Arc<()>);

/// An upstream session opened for a key.
#[derive(Clone)]
pub struct Open {
    pub session: Option<String>,
    pub version: String,
    /// What the upstream's `initialize` said it offers.
    pub capabilities: Value,
    /// The upstream (URL, credentials) and key it was opened for: after a
    /// reload that changes either, it is closed and another opened.
    up: Arc<Upstream>,
    key_hash: [u8; 32],
}

fn dropped(s: Slot) -> Option<Dropped> {
    match s.cell.get() {
        Some(Ok(open)) => Some((open.clone(), s.users)),
        _ => None,
    }
}

impl Bridges {
    /// Whether the upstream speaks 2026-07-28, if known (and recent).
    pub(super) fn era(&self, t: &Target) -> Option<bool> {
        let eras = lock(&self.eras);
        let e = eras.get(t.up.name.as_str())?;
        (e.url == t.up.url && e.at.elapsed() < ERA_TTL).then_some(e.stateless)
    }

    fn learn(&self, t: &Target, stateless: bool) {
        let mut eras = lock(&self.eras);
        // Bounded by the configured upstreams; drop what a reload removed.
        eras.retain(|_, e| e.at.elapsed() < ERA_TTL);
        eras.insert(
            t.up.name.as_str().to_owned(),
            Era {
                url: t.up.url.clone(),
                stateless,
                at: Instant::now(),
            },
        );
    }

    /// The slot for this key and upstream (new if none, or if the one there
    /// is idle too long or was opened for another upstream or key), and the
    /// sessions to close: replaced, expired, or evicted to stay within `max`.
    fn slot(
        &self,
        key: &(String, String),
        fits: impl Fn(&Open) -> bool,
        idle: Duration,
        max: usize,
    ) -> (Arc<OnceCell<Opened>>, Arc<()>, Vec<Dropped>) {
        let mut sessions = lock(&self.sessions);
        let mut closed = Vec::new();
        if let Some(s) = sessions.get_mut(key) {
            let stale = match s.cell.get() {
                Some(Ok(open)) => s.used.elapsed() >= idle || !fits(open),
                // Opening, or failed (its opener removes it).
                _ => false,
            };
            if !stale {
                s.used = Instant::now();
                return (s.cell.clone(), s.users.clone(), closed);
            }
            closed.extend(sessions.remove(key).and_then(dropped));
        }
        let max = max.max(1);
        if sessions.len() >= max {
            let expired: Vec<_> = sessions
                .iter()
                .filter(|(_, s)| s.used.elapsed() >= idle)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                closed.extend(sessions.remove(&k).and_then(dropped));
            }
        }
        if sessions.len() >= max
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
        {
            closed.extend(sessions.remove(&oldest).and_then(dropped));
        }
        let slot = Slot {
            cell: Arc::new(OnceCell::new()),
            used: Instant::now(),
            users: Arc::new(()),
        };
        let out = (slot.cell.clone(), slot.users.clone());
        sessions.insert(key.clone(), slot);
        (out.0, out.1, closed)
    }

    /// Removes the slot if it still holds this cell (its open failed, or its
    /// session was lost); what it held, to close.
    fn remove_if(&self, key: &(String, String), cell: &Arc<OnceCell<Opened>>) -> Option<Dropped> {
        let mut sessions = lock(&self.sessions);
        if sessions
            .get(key)
            .is_some_and(|s| Arc::ptr_eq(&s.cell, cell))
        {
            return sessions.remove(key).and_then(dropped);
        }
        None
    }

    /// Removes the slot if it still holds this session (the upstream lost
    /// it; another request may have opened the next already); what it held.
    fn forget(&self, key: &(String, String), session: &Option<String>) -> Option<Dropped> {
        let mut sessions = lock(&self.sessions);
        let same = sessions.get(key).is_some_and(|s| {
            s.cell
                .get()
                .is_some_and(|o| o.as_ref().is_ok_and(|o| &o.session == session))
        });
        if same {
            return sessions.remove(key).and_then(dropped);
        }
        None
    }

    /// Whether the slot still holds this cell.
    fn holds(&self, key: &(String, String), cell: &Arc<OnceCell<Opened>>) -> bool {
        lock(&self.sessions)
            .get(key)
            .is_some_and(|s| Arc::ptr_eq(&s.cell, cell))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Open bridged sessions (for tests and metrics).
    pub fn open_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }
}

fn cache_key(call: &Call<'_>, t: &Target) -> (String, String) {
    (
        call.key.prefix.as_str().to_owned(),
        t.up.name.as_str().to_owned(),
    )
}

/// Whether a target reached by a 2026-07-28 client may need a bridge.
fn candidate(t: &Target) -> bool {
    t.version == mcp::STATELESS && t.session.is_none() && t.meta.is_none()
}

/// Whether the gateway speaks to this target in its own revision (no bridge).
/// The probe is boxed: it runs for 2026-07-28 clients only, and inline its
/// 1.6 KiB future would sit in every aggregated call's.
pub async fn speaks(call: &Call<'_>, t: &Target) -> bool {
    !candidate(t) || Box::pin(speaks_stateless(call, t)).await
}

/// The session this key holds with the upstream, opened if need be (once,
/// whoever else is waiting for it), and a token held while it is used.
async fn session(call: &Call<'_>, t: &Target) -> Result<(Open, InUse), GatewayError> {
    let limits = &call.rt.limits;
    let key = cache_key(call, t);
    let bridges = &call.gw.bridges;
    let (cell, users, closed) = bridges.slot(
        &key,
        |o| Arc::ptr_eq(&o.up, &t.up) && o.key_hash == call.key.hash,
        limits.bridged_session_idle_timeout,
        limits.max_bridged_sessions,
    );
    for d in closed {
        close(call, d);
    }
    let opened = cell
        .get_or_init(|| async { open(call, t).await.map_err(Arc::new) })
        .await;
    match opened {
        Ok(open) => {
            if !bridges.holds(&key, &cell) {
                // Evicted while it opened: used by this request, then closed.
                close(call, (open.clone(), users.clone()));
            }
            Ok((open.clone(), InUse { _held: users }))
        }
        Err(e) => {
            // Every request that waited gets the one failure; the next opens anew.
            bridges.remove_if(&key, &cell);
            Err(again(e))
        }
    }
}

/// A failure to open a session, for each request that waited on it.
fn again(e: &GatewayError) -> GatewayError {
    match e {
        GatewayError::UpstreamUnavailable { upstream, reason } => {
            GatewayError::UpstreamUnavailable {
                upstream: upstream.clone(),
                reason: reason.clone(),
            }
        }
        GatewayError::UpstreamTimeout { upstream, after_ms } => GatewayError::UpstreamTimeout {
            upstream: upstream.clone(),
            after_ms: *after_ms,
        },
        GatewayError::UpstreamBadResponse { upstream, reason } => {
            GatewayError::UpstreamBadResponse {
                upstream: upstream.clone(),
                reason: reason.clone(),
            }
        }
        other => GatewayError::UpstreamBadResponse {
            upstream: String::new(),
            reason: format!("opening a session failed: {other}"),
        },
    }
}

/// Held (in a response's extensions, then by whoever reads its body) while
/// a request uses a bridged session, so the session is not closed under it.
#[derive(Clone)]
pub struct InUse {
    _held: Arc<()>,
}

/// Sends over this key's bridged session: the request without what only
/// 2026-07-28 knows, under an id of the gateway's. If the upstream has
/// forgotten the session (404, or a 400 that says so, as many servers
/// answer), the request was not handled: it goes once more over a new one.
pub async fn send(
    call: &Call<'_>,
    t: &Target,
    msg: &Value,
) -> Result<http::Response<UpstreamBody>, GatewayError> {
    let (msg, sent_id) = to_sessions(msg, &call.gw.bridges);
    let mut retried = false;
    loop {
        let (open, in_use) = session(call, t).await?;
        let over = Target {
            session: open.session.clone(),
            version: open.version.clone(),
            ..t.clone()
        };
        let resp = send_direct(call, &over, &msg, None).await?;
        let (mut resp, lost) = session_lost(call, t, resp).await?;
        if lost && !retried {
            tracing::info!(upstream = %t.up.name, status = %resp.status(), "bridged session lost; opening another");
            if let Some(d) = call.gw.bridges.forget(&cache_key(call, t), &open.session) {
                close(call, d);
            }
            retried = true;
            continue;
        }
        if let Some(id) = sent_id {
            resp.extensions_mut().insert(SentId(id));
        }
        resp.extensions_mut().insert(in_use);
        return Ok(resp);
    }
}

/// Whether the upstream said it does not know the session: a 404, or a 400
/// whose body says so (read here, and put back).
async fn session_lost(
    call: &Call<'_>,
    t: &Target,
    resp: http::Response<UpstreamBody>,
) -> Result<(http::Response<UpstreamBody>, bool), GatewayError> {
    match resp.status() {
        StatusCode::NOT_FOUND => Ok((resp, true)),
        StatusCode::BAD_REQUEST => {
            let (parts, body) = resp.into_parts();
            let bytes = upstream::read_json_body(&t.up, body, &call.rt.limits).await?;
            let lost = String::from_utf8_lossy(&bytes)
                .to_ascii_lowercase()
                .contains("session");
            Ok((
                http::Response::from_parts(parts, UpstreamBody::full(bytes)),
                lost,
            ))
        }
        _ => Ok((resp, false)),
    }
}

/// The id a bridged request went under (on its response's extensions), so
/// its answer is recognised.
#[derive(Clone)]
pub struct SentId(pub Value);

/// Gives an answer from a bridged session back its client's id.
pub fn restore_id(v: &mut Value) {
    let Some(orig) = v
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix(ID_PREFIX))
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(_, orig)| serde_json::from_str::<Value>(orig).ok())
    else {
        return;
    };
    v["id"] = orig;
}

/// What a bridged upstream offers (its `initialize` answer), or `None` when
/// the gateway speaks to it in 2026-07-28.
pub async fn capabilities(call: &Call<'_>, t: &Target) -> Result<Option<Value>, GatewayError> {
    if speaks(call, t).await {
        return Ok(None);
    }
    Ok(Some(session(call, t).await?.0.capabilities))
}

/// Whether the upstream speaks 2026-07-28. Only a clear answer is learnt: a
/// refusal (400, 404, 405, or a JSON-RPC error) means the session-based
/// revisions; anything else (down, failing, 401, 429) teaches nothing, and
/// the request goes as it came, to fail or not on its own.
async fn speaks_stateless(call: &Call<'_>, t: &Target) -> bool {
    let bridges = &call.gw.bridges;
    if let Some(known) = bridges.era(t) {
        return known;
    }
    // One probe per upstream at a time; the requests that arrive meanwhile
    // wait for its answer.
    let learnt = bridges
        .probes
        .run(t.up.name.as_str(), || probe(call, t))
        .await;
    learnt.unwrap_or(true)
}

/// Asks the upstream what it speaks: `None` when the answer is unclear.
async fn probe(call: &Call<'_>, t: &Target) -> Option<bool> {
    let probe = discover_request(&json!({}));
    let resp = send_direct(call, t, &probe, None).await.ok()?;
    let stateless = match resp.status() {
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => false,
        s if s.is_success() => match read_answer(call, t, &probe, resp).await.ok()? {
            (answer, _) if answer.get("error").is_some() => false,
            (answer, _) => answer.get("result").is_some_and(names_stateless),
        },
        _ => return None,
    };
    tracing::debug!(upstream = %t.up.name, stateless, "learnt what the upstream speaks");
    // Learnt before the probe is let go: no request starts another meanwhile.
    call.gw.bridges.learn(t, stateless);
    Some(stateless)
}

/// Opens a session with the upstream for this key.
async fn open(call: &Call<'_>, t: &Target) -> Result<Open, GatewayError> {
    let up = t.up.name.as_str();
    let init = json!({"jsonrpc": "2.0", "id": "stoa-bridge", "method": "initialize", "params": {
        "protocolVersion": mcp::LATEST,
        // Nothing that needs requests to the client: they cannot cross.
        "capabilities": {},
        "clientInfo": {"name": "stoa-gateway", "version": env!("CARGO_PKG_VERSION")},
    }});
    let fresh = Target {
        version: mcp::LATEST.to_owned(),
        session: None,
        ..t.clone()
    };
    let (answer, headers) = request_direct(call, &fresh, &init).await?;
    let Some(result) = answer.get("result") else {
        return Err(GatewayError::refused_by(
            up,
            "initialize",
            answer.get("error").unwrap_or(&Value::Null),
        ));
    };
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .filter(|v| mcp::is_supported(v) && *v != mcp::STATELESS)
        .ok_or_else(|| GatewayError::UpstreamBadResponse {
            upstream: up.to_owned(),
            reason: format!("initialize answered an unsupported version: {result}"),
        })?
        .to_owned();
    let session = headers
        .get(mcp::HDR_SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let opened = Target {
        version: version.clone(),
        session: session.clone(),
        ..fresh
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    match send_direct(call, &opened, &initialized, None).await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => tracing::warn!(upstream = %up, status = %r.status(), "initialized refused"),
        Err(e) => tracing::warn!(upstream = %up, "initialized not delivered: {e}"),
    }
    tracing::info!(upstream = %up, %version, "bridged session opened");
    Ok(Open {
        session,
        version,
        capabilities: result.get("capabilities").cloned().unwrap_or_default(),
        up: t.up.clone(),
        key_hash: call.key.hash,
    })
}

/// Ends a session the gateway no longer keeps, once no request uses it (a
/// stream may for a while: waits at most `stream_idle_timeout`), with a
/// DELETE, best effort, in the background.
fn close(call: &Call<'_>, (open, users): Dropped) {
    let Some(session) = open.session else { return };
    let gw = call.gw.clone();
    let timeout = call.rt.limits.upstream_response_timeout;
    let patience = call.rt.limits.stream_idle_timeout;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + patience;
        while Arc::strong_count(&users) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&open.version) {
            h.insert(mcp::HDR_VERSION, v);
        }
        let Ok(req) = upstream::upstream_request(
            &open.up,
            Method::DELETE,
            crate::headers::map_fields(&h),
            Some(&session),
            Bytes::new(),
        ) else {
            return;
        };
        if let Err(e) = gw.client.send(&open.up, req, timeout).await {
            tracing::debug!(upstream = %open.up.name, "closing a bridged session failed: {e}");
        }
    });
}

/// A 2026-07-28 request as a session-based upstream expects it: without the
/// `_meta` keys of that revision (its progress token stays), and under an id
/// of the gateway's (returned) if it has one.
pub fn to_sessions(msg: &Value, bridges: &Bridges) -> (Value, Option<Value>) {
    let mut msg = msg.clone();
    if let Some(params) = msg.get_mut("params").and_then(Value::as_object_mut) {
        if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
            meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
            if meta.is_empty() {
                params.remove("_meta");
            }
        }
        // Rounds of an `input_required` exchange have no meaning here.
        params.remove("inputResponses");
        params.remove("requestState");
    }
    // Only requests: a response keeps the id its upstream gave.
    let sent = msg
        .get("id")
        .cloned()
        .filter(|_| msg.get("method").is_some())
        .map(|id| {
            let sent = json!(format!("{ID_PREFIX}{}:{id}", bridges.next_id()));
            msg["id"] = sent.clone();
            sent
        });
    (msg, sent)
}

/// The other way: a session-based client's capabilities as it declares them
/// to an upstream that speaks only 2026-07-28, less what would need that
/// upstream's `input_required` rounds (sampling, elicitation, roots), which
/// the gateway cannot turn into requests to a session-based client.
pub fn crossing_caps(caps: Option<&Value>) -> Value {
    let mut caps = caps
        .filter(|c| c.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(m) = caps.as_object_mut() {
        for name in ["sampling", "elicitation", "roots"] {
            m.remove(name);
        }
    }
    caps
}

/// The `_meta` every request of a session-based client gains on its way to
/// an upstream that speaks only 2026-07-28.
pub fn stateless_meta(s: &SessionState) -> Option<Arc<Value>> {
    s.upstreams
        .iter()
        .any(|u| u.version == mcp::STATELESS)
        .then(|| {
            Arc::new(json!({
                "io.modelcontextprotocol/protocolVersion": mcp::STATELESS,
                "io.modelcontextprotocol/clientCapabilities":
                    s.client_caps.clone().unwrap_or_else(|| json!({})),
            }))
        })
}

/// A session-based client's request as a 2026-07-28 upstream expects it.
pub fn to_stateless(msg: &Value, meta: &Value) -> Value {
    let mut msg = msg.clone();
    if msg.get("method").is_none() {
        return msg;
    }
    if !msg.get("params").is_some_and(Value::is_object) {
        msg["params"] = json!({});
    }
    let params = &mut msg["params"];
    if !params.get("_meta").is_some_and(Value::is_object) {
        params["_meta"] = json!({});
    }
    if let (Some(into), Some(from)) = (params["_meta"].as_object_mut(), meta.as_object()) {
        for (k, v) in from {
            into.insert(k.clone(), v.clone());
        }
    }
    msg
}

/// For `initialize`: whether an upstream that refused it speaks 2026-07-28,
/// and if so what it offers (its `server/discover` result).
pub async fn discover_stateless(call: &Call<'_>, t: &Target, caps: &Value) -> Option<Value> {
    let probe = discover_request(caps);
    let modern = Target {
        version: mcp::STATELESS.to_owned(),
        session: None,
        ..t.clone()
    };
    let (answer, _) = request_direct(call, &modern, &probe)
        .await
        .inspect_err(|e| tracing::warn!(upstream = %t.up.name, "server/discover failed: {e}"))
        .ok()?;
    let result = answer.get("result")?;
    let speaks = names_stateless(result);
    call.gw.bridges.learn(t, speaks);
    speaks.then(|| result.clone())
}

/// The `server/discover` that asks an upstream what it speaks.
fn discover_request(caps: &Value) -> Value {
    json!({"jsonrpc": "2.0", "id": "stoa-probe", "method": "server/discover",
    "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": mcp::STATELESS,
        "io.modelcontextprotocol/clientCapabilities": caps,
    }}})
}

/// Whether a `server/discover` result names 2026-07-28.
fn names_stateless(result: &Value) -> bool {
    result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|x| x == mcp::STATELESS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_lose_what_only_2026_knows_and_go_under_a_gateway_id() {
        let b = Bridges::default();
        let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"message": "m"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": "p"}}});
        let (sent, id) = to_sessions(&msg, &b);
        assert_eq!(
            sent["params"],
            json!({"name": "echo", "arguments": {"message": "m"}, "_meta": {"progressToken": "p"}})
        );
        let (again, other) = to_sessions(&msg, &b);
        assert_ne!(id, other, "two requests with one client id never meet");
        assert_eq!(Some(&again["id"]), other.as_ref());
        let mut answer = json!({"jsonrpc": "2.0", "id": sent["id"], "result": {}});
        restore_id(&mut answer);
        assert_eq!(answer["id"], 1);
        let bare = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        let (sent, id) = to_sessions(&bare, &b);
        assert_eq!((sent["params"].clone(), id), (json!({}), None));
    }

    fn opened(session: &str, up: &Arc<Upstream>) -> Open {
        Open {
            session: Some(session.into()),
            version: mcp::LATEST.into(),
            capabilities: json!({}),
            up: up.clone(),
            key_hash: [0; 32],
        }
    }

    #[test]
    fn sessions_are_bounded_replaced_and_removed_only_when_still_theirs() {
        let up = Arc::new(Upstream {
            name: crate::model::UpstreamName::parse("up").unwrap(),
            url: "http://127.0.0.1:1/mcp".parse().unwrap(),
            tenant: None,
            headers: Vec::new(),
        });
        let b = Bridges::default();
        let k = |i: u32| (format!("key{i}"), "up".to_owned());
        let idle = Duration::from_secs(60);
        let fits = |_: &Open| true;
        let session_of = |cell: &Arc<OnceCell<Opened>>| {
            cell.get()
                .and_then(|o| o.as_ref().ok())
                .and_then(|o| o.session.clone())
        };
        for i in 0..2 {
            let (cell, _, closed) = b.slot(&k(i), fits, idle, 2);
            assert!(closed.is_empty());
            assert!(cell.set(Ok(opened(&format!("s{i}"), &up))).is_ok());
        }
        let (again, users, _) = b.slot(&k(1), fits, idle, 2);
        assert_eq!(session_of(&again).as_deref(), Some("s1"), "kept");
        let (_, _, closed) = b.slot(&k(2), fits, idle, 2);
        assert_eq!(b.open_sessions(), 2, "at most max");
        assert_eq!(
            closed[0].0.session.as_deref(),
            Some("s0"),
            "the least used went"
        );

        // Opened for another upstream (a reload): closed and replaced; the
        // request still using it holds it (the closer waits for that).
        let (cell, _, closed) = b.slot(&k(1), |_| false, idle, 2);
        assert_eq!(closed[0].0.session.as_deref(), Some("s1"));
        assert_eq!(Arc::strong_count(&users), 2, "the slot's and ours");
        assert!(cell.set(Ok(opened("s1b", &up))).is_ok());
        // Removed only by whoever holds the cell it has now.
        assert!(b.remove_if(&k(1), &again).is_none());
        assert!(b.holds(&k(1), &cell));
        assert_eq!(
            b.remove_if(&k(1), &cell).map(|d| d.0.session),
            Some(Some("s1b".into()))
        );
        assert!(
            b.slot(&k(1), fits, idle, 2).0.get().is_none(),
            "a new one opens"
        );
    }
}
