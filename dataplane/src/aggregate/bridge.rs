//! `/mcp` for a 2026-07-28 client over an upstream that speaks only the
//! session-based revisions.
//!
//! The client has no session; such an upstream needs one. Each replica
//! opens one upstream session per (key, upstream) when first needed and
//! keeps it while it is used (`limits.bridged_session_idle_timeout`, at most
//! `limits.max_bridged_sessions`). It is a cache, not state the client
//! relies on: another replica opens its own, and a session the upstream has
//! forgotten (404) is opened again, once. Whether an upstream speaks
//! 2026-07-28 is learnt by a `server/discover` and remembered a few minutes.
//!
//! Requests lose the 2026-07-28 `_meta` keys; results gain what that
//! revision requires (`Rewrite` in `aggregate.rs`). What does not cross:
//! requests from the upstream to the client (sampling, elicitation, roots),
//! which 2026-07-28 carries as `input_required` results the gateway could
//! not resume; so the gateway declares no client capabilities to the
//! upstream. Change notifications of such an upstream (its GET stream) do
//! not reach `subscriptions/listen` either.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{Target, read_answer, request_direct, send_direct};
use crate::{error::GatewayError, gateway::Call, mcp};

/// How long what an upstream speaks is remembered.
const ERA_TTL: Duration = Duration::from_secs(300);

/// What this replica knows of upstreams for bridging.
#[derive(Default)]
pub struct Bridges {
    /// Upstream URL → speaks 2026-07-28, and when that was learnt.
    eras: Mutex<HashMap<String, (bool, Instant)>>,
    /// (key prefix, upstream name) → its open session.
    sessions: Mutex<HashMap<(String, String), Open>>,
}

/// An upstream session opened for a key.
#[derive(Clone)]
pub struct Open {
    pub session: Option<String>,
    pub version: String,
    /// What the upstream's `initialize` said it offers.
    pub capabilities: Value,
    used: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Bridges {
    fn era(&self, url: &str) -> Option<bool> {
        let eras = lock(&self.eras);
        let (stateless, at) = eras.get(url)?;
        (at.elapsed() < ERA_TTL).then_some(*stateless)
    }

    fn learn(&self, url: &str, stateless: bool) {
        let mut eras = lock(&self.eras);
        // Bounded by the configured upstreams; drop what a reload removed.
        eras.retain(|_, (_, at)| at.elapsed() < ERA_TTL);
        eras.insert(url.to_owned(), (stateless, Instant::now()));
    }

    fn get(&self, key: &(String, String), idle: Duration) -> Option<Open> {
        let mut sessions = lock(&self.sessions);
        let open = sessions.get_mut(key)?;
        if open.used.elapsed() >= idle {
            sessions.remove(key);
            return None;
        }
        open.used = Instant::now();
        Some(open.clone())
    }

    fn keep(&self, key: (String, String), open: Open, idle: Duration, max: usize) {
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= max {
            sessions.retain(|_, o| o.used.elapsed() < idle);
        }
        if sessions.len() >= max
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, o)| o.used)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        if max > 0 {
            sessions.insert(key, open);
        }
    }

    fn forget(&self, key: &(String, String)) {
        lock(&self.sessions).remove(key);
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

/// Whether a target reached by a 2026-07-28 client needs a bridge.
pub fn candidate(t: &Target) -> bool {
    t.version == mcp::STATELESS && t.session.is_none() && !t.bridged
}

/// The target as the gateway must speak to it: unchanged if the upstream
/// speaks 2026-07-28, else over this key's bridged session (opened if need be).
pub async fn resolve(call: &Call<'_>, t: &Target) -> Result<Target, GatewayError> {
    if !candidate(t) || speaks_stateless(call, t).await? {
        return Ok(t.clone());
    }
    let limits = &call.rt.limits;
    let key = cache_key(call, t);
    let open = match call
        .gw
        .bridges
        .get(&key, limits.bridged_session_idle_timeout)
    {
        Some(o) => o,
        None => {
            let o = open(call, t).await?;
            call.gw.bridges.keep(
                key,
                o.clone(),
                limits.bridged_session_idle_timeout,
                limits.max_bridged_sessions,
            );
            o
        }
    };
    Ok(Target {
        session: open.session,
        version: open.version,
        bridged: true,
        ..t.clone()
    })
}

/// The upstream forgot this key's session: the next `resolve` opens another.
pub fn forget(call: &Call<'_>, t: &Target) {
    call.gw.bridges.forget(&cache_key(call, t));
}

/// What a bridged upstream offers (its `initialize` answer), or `None` when
/// it speaks 2026-07-28 itself.
pub async fn capabilities(call: &Call<'_>, t: &Target) -> Result<Option<Value>, GatewayError> {
    if !candidate(t) || speaks_stateless(call, t).await? {
        return Ok(None);
    }
    resolve(call, t).await?;
    let open = call.gw.bridges.get(
        &cache_key(call, t),
        call.rt.limits.bridged_session_idle_timeout,
    );
    Ok(Some(open.map(|o| o.capabilities).unwrap_or_default()))
}

async fn speaks_stateless(call: &Call<'_>, t: &Target) -> Result<bool, GatewayError> {
    let url = t.up.url.to_string();
    if let Some(known) = call.gw.bridges.era(&url) {
        return Ok(known);
    }
    let probe = json!({"jsonrpc": "2.0", "id": "stoa-probe", "method": "server/discover",
    "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": mcp::STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {},
    }}});
    // Only a clear answer is learnt: a refusal (4xx, or a JSON-RPC error)
    // means the session-based revisions; an upstream that is down or
    // failing (5xx) teaches nothing and fails this request.
    let resp = send_direct(call, t, &probe, None).await?;
    let stateless = if resp.status().is_client_error() {
        false
    } else {
        let (answer, _) = read_answer(call, t, &probe, resp).await?;
        answer
            .pointer("/result/supportedVersions")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|x| x == mcp::STATELESS))
    };
    tracing::debug!(upstream = %t.up.name, stateless, "learnt what the upstream speaks");
    call.gw.bridges.learn(&url, stateless);
    Ok(stateless)
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
        bridged: false,
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
        used: Instant::now(),
    })
}

/// A 2026-07-28 request as a session-based upstream expects it: without the
/// `_meta` keys of that revision (its progress token stays).
pub fn to_sessions(msg: &Value) -> Value {
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
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_lose_what_only_2026_knows() {
        let msg = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"message": "m"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}, "progressToken": "p"}}});
        assert_eq!(
            to_sessions(&msg)["params"],
            json!({"name": "echo", "arguments": {"message": "m"}, "_meta": {"progressToken": "p"}})
        );
        let bare = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        assert_eq!(to_sessions(&bare)["params"], json!({}));
    }

    #[test]
    fn sessions_are_bounded_and_expire() {
        let b = Bridges::default();
        let open = || Open {
            session: Some("s".into()),
            version: mcp::LATEST.into(),
            capabilities: json!({}),
            used: Instant::now(),
        };
        let k = |i: u32| (format!("key{i}"), "up".to_owned());
        let idle = Duration::from_secs(60);
        for i in 0..3 {
            b.keep(k(i), open(), idle, 2);
        }
        assert_eq!(b.open_sessions(), 2, "at most max");
        assert!(b.get(&k(0), idle).is_none(), "the oldest went first");
        assert!(b.get(&k(2), idle).is_some());
        assert!(b.get(&k(2), Duration::ZERO).is_none(), "idle too long");
        assert!(b.get(&k(2), idle).is_none(), "and gone");
    }
}
