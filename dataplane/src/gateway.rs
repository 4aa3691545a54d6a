//! The gateway's shared state and its router: one function from an HTTP
//! request (from any listener, any HTTP version) to a response.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body::Body as HttpBody;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    aggregate, auth,
    body::{self, Body, BoxError},
    config::{FileConfig, Limits},
    error::GatewayError,
    headers::{Head, Headers, Name},
    metrics::Metrics,
    model::{ApiKey, KeyIndex, Rejected, SessionSpec, Snapshot},
    relay,
    session::{SealError, SessionKeys, SessionState},
    upstream::UpstreamClient,
};

/// Everything a config (re)load produces, swapped in atomically.
#[derive(Clone)]
pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    /// False until a gateway fed by a control plane has its first snapshot
    /// (from the stream or its cache file): it is not ready, and refuses MCP
    /// requests with 503 rather than calling every key unknown.
    pub configured: bool,
    pub limits: Limits,
    pub sessions: Arc<SessionKeys>,
    /// The control plane's session keys `sessions` was made from, if any.
    session_spec: Option<Arc<SessionSpec>>,
    session_ttl: u64,
    pub allowed_origins: Vec<String>,
    /// Health and metrics live on a separate admin listener.
    pub admin_separate: bool,
}

impl Runtime {
    /// `keep` is the running runtime on a reload: its session keys stay when
    /// the config names none (so a reload does not end every open session),
    /// and its snapshot stays when resources come from a control plane.
    pub fn from_config(
        cfg: &FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
        keep: Option<&Runtime>,
    ) -> Result<(Runtime, Vec<Rejected>), String> {
        let (snapshot, configured, rejected) = match (&cfg.control_plane, keep) {
            (Some(_), _)
                if !(cfg.tenants.is_empty()
                    && cfg.upstreams.is_empty()
                    && cfg.subscriptions.is_empty()
                    && cfg.api_keys.is_empty()) =>
            {
                return Err("control_plane is set: tenants, upstreams, subscriptions and api_keys come from it and must not be listed in the file".into());
            }
            (Some(_), Some(running)) => (running.snapshot.clone(), running.configured, Vec::new()),
            (Some(_), None) => (Arc::new(Snapshot::default()), false, Vec::new()),
            (None, _) => {
                let (snap, rejected) = Snapshot::build_with_env(cfg, env);
                (Arc::new(snap), true, rejected)
            }
        };
        let ttl = cfg.sessions.ttl.as_secs();
        let file_key = env("STOA_SESSION_KEY").or_else(|| cfg.sessions.key.clone());
        let sessions = match (&snapshot.session_keys, file_key) {
            (Some(spec), _) => keys_from_spec(spec, ttl),
            (None, Some(k)) => {
                let current =
                    SessionKeys::decode_key(&k).map_err(|e| format!("sessions.key: {e}"))?;
                let previous = cfg
                    .sessions
                    .previous_keys
                    .iter()
                    .map(|k| SessionKeys::decode_key(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("sessions.previous_keys: {e}"))?;
                Arc::new(SessionKeys::new(current, &previous, ttl))
            }
            (None, None) => match keep {
                Some(running) => running.sessions.clone(),
                None => {
                    if cfg.control_plane.is_none() {
                        tracing::warn!(
                            "no sessions.key configured: sessions will not survive a restart or move between replicas"
                        );
                    }
                    Arc::new(SessionKeys::random(ttl))
                }
            },
        };
        Ok((
            Runtime {
                session_spec: snapshot.session_keys.clone(),
                snapshot,
                configured,
                limits: cfg.limits.clone(),
                sessions,
                session_ttl: ttl,
                allowed_origins: cfg.allowed_origins.clone(),
                admin_separate: cfg.listeners.admin.is_some(),
            },
            rejected,
        ))
    }

    /// This runtime with another snapshot (from the control plane). Session
    /// keys follow the snapshot's when it carries new ones.
    pub fn with_snapshot(&self, snapshot: Arc<Snapshot>) -> Runtime {
        let sessions = match &snapshot.session_keys {
            Some(spec) if self.session_spec.as_deref() != Some(spec) => {
                keys_from_spec(spec, self.session_ttl)
            }
            _ => self.sessions.clone(),
        };
        Runtime {
            session_spec: snapshot.session_keys.clone().or(self.session_spec.clone()),
            snapshot,
            configured: true,
            limits: self.limits.clone(),
            sessions,
            session_ttl: self.session_ttl,
            allowed_origins: self.allowed_origins.clone(),
            admin_separate: self.admin_separate,
        }
    }
}

fn keys_from_spec(spec: &SessionSpec, file_ttl: u64) -> Arc<SessionKeys> {
    let ttl = if spec.ttl_secs > 0 {
        spec.ttl_secs
    } else {
        file_ttl
    };
    Arc::new(SessionKeys::new(spec.current, &spec.previous, ttl))
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub client: UpstreamClient,
    pub metrics: Metrics,
    /// Cancelled when the gateway starts draining: GET streams end cleanly.
    pub draining: CancellationToken,
    /// One per shard of the key index, told when a new runtime changes a
    /// key of that shard, so an open stream checks its key when its shard
    /// changed rather than on every change of configuration.
    key_changes: Box<[tokio::sync::watch::Sender<()>]>,
    /// Sessions this replica holds for 2026-07-28 clients of `/mcp` with
    /// session-based upstreams (a cache; see `aggregate::bridge`).
    pub bridges: crate::aggregate::Bridges,
    ready: AtomicBool,
    id_prefix: u32,
}

/// Request numbers are handed to threads in blocks, so that numbering a
/// request writes no cache line another thread reads or writes. One count
/// per process: a number is never given twice, whichever gateway of the
/// process (tests run several) a thread serves.
static REQUEST_NUMBERS: AtomicU64 = AtomicU64::new(0);
const NUMBER_BLOCK: u64 = 1 << 16;

thread_local! {
    /// This thread's next request number and the end of its block.
    static NUMBERS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn request_number() -> u64 {
    NUMBERS.with(|c| {
        let (mut next, mut end) = c.get();
        if next == end {
            next = REQUEST_NUMBERS.fetch_add(NUMBER_BLOCK, Ordering::Relaxed);
            end = next + NUMBER_BLOCK;
        }
        c.set((next + 1, end));
        next
    })
}

pub(crate) const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Per-request facts for logs and metrics.
pub struct ReqCtx {
    pub method: &'static str,
    /// Empty until routed; several, comma-separated, for an aggregated
    /// `initialize`.
    pub upstream: Option<Arc<str>>,
    pub tool: Option<String>,
    pub key: Option<Arc<crate::model::ApiKey>>,
    /// The request speaks 2026-07-28, where JSON-RPC errors carry an HTTP
    /// error status too (`GatewayError::status_for`).
    pub stateless: bool,
}

impl ReqCtx {
    pub fn upstream(&self) -> &str {
        self.upstream.as_deref().unwrap_or("")
    }
}

impl Gateway {
    /// `upstream_roots`: CAs trusted for `https://` upstreams besides the
    /// web roots (`upstream_ca_file`, read once at start).
    pub fn new(
        runtime: Runtime,
        upstream_roots: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Arc<Self> {
        let client = UpstreamClient::new(&runtime.limits, upstream_roots);
        let mut seed = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .expect("OS random source");
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            client,
            metrics: Metrics::new(),
            draining: CancellationToken::new(),
            key_changes: (0..KeyIndex::SHARDS)
                .map(|_| tokio::sync::watch::Sender::new(()))
                .collect(),
            bridges: crate::aggregate::Bridges::default(),
            ready: AtomicBool::new(true),
            id_prefix: u32::from_ne_bytes(seed),
        })
    }

    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Swaps in a new runtime; requests already running finish on the old one.
    pub fn swap(&self, rt: Runtime) {
        let before = self.runtime.swap(Arc::new(rt));
        self.announce(&before);
    }

    /// Swaps in a reloaded file's runtime but keeps the control plane's
    /// snapshot and session keys, whatever the stream installed meanwhile.
    pub fn reload_keeping_snapshot(&self, rt: Runtime) {
        let before = self.runtime.rcu(|cur| {
            Arc::new(Runtime {
                snapshot: cur.snapshot.clone(),
                configured: cur.configured,
                sessions: cur.sessions.clone(),
                session_spec: cur.session_spec.clone(),
                ..rt.clone()
            })
        });
        self.announce(&before);
    }

    /// Swaps in a new snapshot (from the control plane), keeping the rest.
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        let before = self
            .runtime
            .rcu(|rt| Arc::new(rt.with_snapshot(snapshot.clone())));
        self.announce(&before);
    }

    /// Tells the streams of every key shard that differs between `before`
    /// and the runtime now. (Two swaps at once each compare their own
    /// `before` with the latest runtime: a superset of their change.)
    fn announce(&self, before: &Runtime) {
        let now = self.runtime();
        for shard in now.snapshot.keys.changed_shards(&before.snapshot.keys) {
            self.key_changes[shard].send_replace(());
        }
    }

    /// Watches what becomes of `key` as the configuration changes (streams
    /// outlive the request that authenticated them).
    pub fn watch_key(self: &Arc<Self>, key: &Arc<ApiKey>) -> KeyWatch {
        let mut changes = self.key_changes[KeyIndex::shard_of(&key.prefix)].subscribe();
        // The key was checked against the runtime its request started on: a
        // change since then is looked at at once.
        changes.mark_changed();
        KeyWatch {
            gw: self.clone(),
            key: key.clone(),
            changes,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The client's `X-Request-Id` if it is short and printable, or a new
    /// one: this gateway's random prefix and the process's request number,
    /// in hex.
    fn request_id(&self, headers: &Headers) -> HeaderValue {
        if let Some(v) = headers.value(Name::X_REQUEST_ID)
            && !v.is_empty()
            && v.len() <= 64
            && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        {
            return v;
        }
        let n = request_number();
        let mut id = [0u8; 16];
        let digits = (u64::from(self.id_prefix) << 32) ^ n;
        for (i, d) in id.iter_mut().enumerate() {
            *d = b"0123456789abcdef"[((digits >> (60 - 4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
    }

    /// `memo` is the connection's (see `ConnMemo`), if it keeps one.
    /// Takes the gateway by reference: a request makes no reference-count
    /// traffic on it (a cache line every worker thread would share).
    pub async fn handle<B>(
        self: &Arc<Self>,
        head: Head,
        body: B,
        listener: Listener,
        memo: Option<&ConnMemo>,
    ) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let rt = self.runtime();
        let id = self.request_id(&head.headers);
        let mut ctx = ReqCtx {
            method: "",
            upstream: None,
            tool: None,
            key: None,
            stateless: false,
        };
        let span = tracing::info_span!("request", id = id.to_str().unwrap_or(""), http = %head.method, path = %head.uri.path());
        let path = head.uri.path();
        let route = route(path, listener, rt.admin_separate);
        let mut resp = match route {
            Route::Health => plain(StatusCode::OK, "ok"),
            Route::Ready => {
                if self.ready.load(Ordering::Relaxed)
                    && rt.configured
                    && !self.draining.is_cancelled()
                {
                    plain(StatusCode::OK, "ready")
                } else {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
            Route::Metrics => {
                let bridged = self.bridges.open_sessions();
                self.metrics
                    .bridged_sessions
                    .set(i64::try_from(bridged).unwrap_or(i64::MAX));
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .body(body::full(self.metrics.render()))
                    .expect("static response parts are valid")
            }
            Route::NotFound => body::json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not found", "hint": "the MCP endpoint is /mcp (every granted upstream) or /mcp/<upstream>"}),
            ),
            Route::Mcp(target) => {
                // With info logging off the span is disabled: skip the wrapper.
                // Each arm builds its own future: one built before the `if`
                // and moved into either arm is laid out twice in this one.
                let r = if span.is_disabled() {
                    self.mcp(&rt, &head, body, target, &mut ctx, memo).await
                } else {
                    self.mcp(&rt, &head, body, target, &mut ctx, memo)
                        .instrument(span.clone())
                        .await
                };
                match r {
                    Ok(resp) => resp,
                    Err((err, id)) => {
                        self.metrics
                            .refusals
                            .with_label_values(&[err.reason()])
                            .inc();
                        if err.fault() == crate::error::Fault::Downstream {
                            tracing::debug!(parent: &span, reason = err.reason(), "refused: {err}");
                        } else {
                            tracing::warn!(parent: &span, reason = err.reason(), "failed: {err}");
                        }
                        body::error_response(&err, id.as_ref(), ctx.stateless)
                    }
                }
            }
        };
        // New on every response: HPACK (h2) would add each one to the
        // connection's table, evicting what repeats and lengthening every
        // later lookup. Sensitive values are sent literally, never indexed.
        let mut id = id;
        id.set_sensitive(true);
        resp.headers_mut().insert(X_REQUEST_ID, id);
        if let Route::Mcp(_) = route {
            let status = resp.status();
            let route_label = if ctx.upstream.is_none() || path == "/mcp" {
                "aggregate"
            } else {
                "upstream"
            };
            let elapsed = started.elapsed();
            self.metrics.request_done(
                [route_label, ctx.method, ctx.upstream(), status.as_str()],
                elapsed.as_secs_f64(),
                memo.map(|m| &m.requests),
            );
            tracing::info!(parent: &span, status = status.as_u16(), mcp = ctx.method, upstream = ctx.upstream(),
                tool = ctx.tool.as_deref().unwrap_or(""), key = ctx.key.as_ref().map_or("", |k| &*k.name),
                micros = elapsed.as_micros() as u64, "done");
        }
        resp
    }

    /// The two endpoints' futures are kilobytes each, and rustc lays out
    /// both and the body read side by side rather than over each other:
    /// each endpoint boxes the future of the request's method
    /// (`relay::handle`, `aggregate::handle`), so the request's future is
    /// small, and what is moved per request into its slot (h1) or a task
    /// (h2, h3) is a pointer, not a copy of all three.
    async fn mcp<B>(
        self: &Arc<Self>,
        rt: &Runtime,
        parts: &Head,
        body: B,
        target: Option<&str>,
        ctx: &mut ReqCtx,
        memo: Option<&ConnMemo>,
    ) -> Result<Response<Body>, (GatewayError, Option<serde_json::Value>)>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        check_origin(&parts.headers, &rt.allowed_origins).map_err(|e| (e, None))?;
        if !rt.configured {
            return Err((GatewayError::NotConfigured, None));
        }
        let key = auth::authenticate(&rt.snapshot, &parts.headers, memo.map(|m| &m.auth))
            .map_err(|e| (e, None))?;
        // Only the request's log line names the key.
        ctx.key = tracing::enabled!(tracing::Level::INFO).then(|| key.clone());
        if parts.method == Method::GET && self.draining.is_cancelled() {
            return Err((GatewayError::ShuttingDown, None));
        }
        let body = match parts.method {
            Method::POST => {
                body::read_bounded(body, rt.limits.max_body_bytes, rt.limits.body_read_timeout)
                    .await
                    .map_err(|e| (e, None))?
            }
            // 2026-07-28 has neither sessions nor a GET stream: a GET or
            // DELETE that names it and no session is answered here, as a
            // modern-only server answers it (405).
            Method::GET | Method::DELETE
                if !parts.headers.contains(Name::MCP_SESSION_ID)
                    && crate::mcp::request_version(&parts.headers)
                        .is_ok_and(|v| v == crate::mcp::STATELESS) =>
            {
                ctx.method = if parts.method == Method::GET {
                    "GET"
                } else {
                    "DELETE"
                };
                return Err((GatewayError::StatelessMethod(parts.method.clone()), None));
            }
            Method::GET | Method::DELETE => Bytes::new(),
            ref m => return Err((GatewayError::MethodNotAllowed(m.clone()), None)),
        };
        let call = Call {
            gw: self,
            rt,
            key: &key,
            method: parts.method.clone(),
            headers: &parts.headers,
            body,
            memo,
        };
        match target {
            Some(name) => {
                // Borrowed, not cloned: both live as long as this request.
                // Looked up by the path's text: only valid names are keys.
                let (up, filter) = rt
                    .snapshot
                    .upstreams
                    .get(name)
                    .zip(key.may_use(name))
                    .ok_or_else(|| (GatewayError::NoSuchUpstream(name.to_owned()), None))?;
                ctx.upstream = Some(up.name.shared());
                relay::handle(call, up, filter, ctx).await
            }
            None => aggregate::handle(call, ctx).await,
        }
    }

    pub fn open_session(
        &self,
        rt: &Runtime,
        headers: &Headers,
        key_prefix: &str,
        memo: Option<&ConnMemo>,
    ) -> Result<Option<Arc<SessionState>>, GatewayError> {
        let Some(id) = headers.get(Name::MCP_SESSION_ID) else {
            return Ok(None);
        };
        let memo = memo.map(|m| &m.session);
        let state = rt
            .sessions
            .open_with(id, unix_now(), memo)
            .map_err(|e| match e {
                SealError::Expired | SealError::Invalid | SealError::BadKey => {
                    GatewayError::UnknownSession
                }
            })?;
        if state.key != key_prefix {
            return Err(GatewayError::UnknownSession);
        }
        Ok(Some(state))
    }
}

/// What a connection remembers between its requests, so that the next
/// request with the same key and session id skips the SHA-256 and the AEAD,
/// and one counted like the last skips the metric lookups.
#[derive(Default)]
pub struct ConnMemo {
    pub auth: auth::Memo,
    pub session: crate::session::Memo,
    /// The metric series its last request was counted in.
    pub requests: crate::metrics::RecentRequest,
    pub tool_calls: crate::metrics::Recent<prometheus::IntCounter>,
}

/// One MCP request, authenticated, with its body read.
pub struct Call<'a> {
    /// The connection's memo, if it keeps one.
    pub memo: Option<&'a ConnMemo>,
    pub gw: &'a Arc<Gateway>,
    pub rt: &'a Runtime,
    pub key: &'a Arc<crate::model::ApiKey>,
    pub method: Method,
    pub headers: &'a Headers,
    pub body: Bytes,
}

impl Call<'_> {
    /// The session the request names, opened for its key (none named: `None`).
    pub fn session(&self) -> Result<Option<Arc<SessionState>>, GatewayError> {
        self.gw
            .open_session(self.rt, self.headers, self.key.prefix.as_str(), self.memo)
    }
}

/// What became of a key since a stream was opened with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Same,
    /// Still valid, with other grants (subscriptions, policies).
    Regranted,
    /// Removed, or its hash replaced.
    Revoked,
}

/// A stream's view of its key (`Gateway::watch_key`).
pub struct KeyWatch {
    gw: Arc<Gateway>,
    key: Arc<ApiKey>,
    changes: tokio::sync::watch::Receiver<()>,
}

impl KeyWatch {
    /// The key's standing after the next configuration change of its
    /// shard of keys.
    pub async fn changed(&mut self) -> Standing {
        if self.changes.changed().await.is_err() {
            // The gateway is gone: nothing will change any more.
            std::future::pending::<()>().await;
        }
        let now = self
            .gw
            .runtime()
            .snapshot
            .keys
            .get(&self.key.prefix)
            .cloned();
        match now {
            Some(k) if Arc::ptr_eq(&k, &self.key) => Standing::Same,
            Some(k) if k.hash == self.key.hash => {
                if Arc::ptr_eq(&k.grants, &self.key.grants) || *k.grants == *self.key.grants {
                    Standing::Same
                } else {
                    self.key = k;
                    Standing::Regranted
                }
            }
            _ => Standing::Revoked,
        }
    }

    /// The key as of the last change seen.
    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// Whether the key (as of the last change seen) may use `upstream`.
    pub fn grants(&self, upstream: &str) -> bool {
        self.key.grants.keys().any(|n| n.as_str() == upstream)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Ready,
    Metrics,
    /// `None`: the aggregated endpoint; `Some(name)`: one upstream.
    Mcp(Option<&'a str>),
    NotFound,
}

fn route(path: &str, listener: Listener, admin_separate: bool) -> Route<'_> {
    let ops_here = listener == Listener::Admin || !admin_separate;
    match path {
        "/healthz" if ops_here => Route::Health,
        "/readyz" if ops_here => Route::Ready,
        "/metrics" if ops_here => Route::Metrics,
        _ if listener == Listener::Admin => Route::NotFound,
        "/mcp" | "/mcp/" => Route::Mcp(None),
        p => match p.strip_prefix("/mcp/") {
            Some(name) if !name.is_empty() && !name.contains('/') => Route::Mcp(Some(name)),
            _ => Route::NotFound,
        },
    }
}

/// Browsers send `Origin`; a page on a site we do not know must not drive
/// an agent's tools (DNS rebinding). Non-browser clients send no `Origin`.
/// Pages on this machine (loopback origins) are allowed; others must be listed.
fn check_origin(headers: &Headers, allowed: &[String]) -> Result<(), GatewayError> {
    let Some(origin) = headers.get(Name::ORIGIN) else {
        return Ok(());
    };
    let origin = crate::headers::text(origin).unwrap_or("<non-ASCII>");
    if is_loopback_origin(origin)
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        Ok(())
    } else {
        Err(GatewayError::ForbiddenOrigin(origin.to_owned()))
    }
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6
            .split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default(),
        None => rest.split(':').next().unwrap_or("").to_owned(),
    };
    matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body::full(text))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        use Listener::*;
        assert_eq!(route("/mcp", Public, false), Route::Mcp(None));
        assert_eq!(route("/mcp/ref", Public, false), Route::Mcp(Some("ref")));
        assert_eq!(route("/mcp/ref/x", Public, false), Route::NotFound);
        assert_eq!(route("/metrics", Public, false), Route::Metrics);
        assert_eq!(route("/metrics", Public, true), Route::NotFound);
        assert_eq!(route("/metrics", Admin, true), Route::Metrics);
        assert_eq!(route("/mcp", Admin, true), Route::NotFound);
    }

    /// What each request holds while in flight (a long tool call, an SSE
    /// stream) is its future: the endpoints' futures are boxed where one is
    /// chosen, so it is not the sum of both (16.7 KiB in release builds
    /// before they were).
    #[test]
    fn a_request_in_flight_holds_a_small_future() {
        let cfg = FileConfig::parse("{}").unwrap();
        let (rt, _) = Runtime::from_config(&cfg, &|_| None, None).unwrap();
        let gw = Gateway::new(rt, &[]);
        let memo = ConnMemo::default();
        let head = Head::new(Method::POST, http::Uri::from_static("/mcp"));
        let body = http_body_util::Empty::<Bytes>::new();
        let fut = gw.handle(head, body, Listener::Public, Some(&memo));
        // Debug builds: 1.7 KiB boxed, 4.1 KiB not (release: 2.1 and 8.9).
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 3072, "a request's future is {size} bytes");
    }

    /// A stream wakes for changes of its own key's shard only, and sees
    /// its key revoked or regranted there.
    #[test]
    fn key_watches_wake_for_their_own_shard() {
        use futures_util::FutureExt;
        use stoa_proto::pb;

        use crate::model::KeyPrefix;
        // Two prefixes in different shards of the key index.
        let mine = "AAAAbbbb";
        let theirs = (0u32..)
            .map(|i| format!("Z{i:07}"))
            .find(|p| {
                KeyIndex::shard_of(&KeyPrefix::parse(p).unwrap())
                    != KeyIndex::shard_of(&KeyPrefix::parse(mine).unwrap())
            })
            .unwrap();
        let hash = format!("sha256:{}", "0".repeat(64));
        let yaml = format!(
            "tenants: [{{name: t}}]\n\
             upstreams: [{{name: up, url: \"http://127.0.0.1:9/mcp\"}}]\n\
             subscriptions: [{{name: s, tenant: t, upstream: up}}, {{name: s2, tenant: t, upstream: up, tools: [echo]}}]\n\
             api_keys:\n  - {{name: mine, tenant: t, prefix: {mine}, hash: \"{hash}\", subscriptions: [s]}}\n  \
             - {{name: theirs, tenant: t, prefix: {theirs}, hash: \"{hash}\", subscriptions: [s]}}\n"
        );
        let cfg = FileConfig::parse(&yaml).unwrap();
        let (rt, _) = Runtime::from_config(&cfg, &|_| None, None).unwrap();
        let gw = Gateway::new(rt, &[]);
        let key = gw.runtime().snapshot.keys[&KeyPrefix::parse(mine).unwrap()].clone();
        let mut watch = gw.watch_key(&key);
        // Marked changed when made: the first look is at once.
        assert_eq!(watch.changed().now_or_never(), Some(Standing::Same));
        assert_eq!(watch.changed().now_or_never(), None, "nothing new");

        let apply = |upserts: Vec<pb::Resource>, removes: Vec<pb::ResourceRef>| {
            let (next, rejected) = gw
                .runtime()
                .snapshot
                .apply(false, upserts, removes, &|_| None);
            assert!(rejected.is_empty(), "{rejected:?}");
            gw.install(Arc::new(next));
        };
        apply(
            vec![],
            vec![pb::ResourceRef::new(pb::Kind::ApiKey, &theirs)],
        );
        assert_eq!(
            watch.changed().now_or_never(),
            None,
            "another shard's revocation does not wake this stream"
        );

        // The key's subscriptions change: regranted, in its own shard.
        let mut regranted = gw.runtime().snapshot.keys[&key.prefix].clone();
        assert!(Arc::ptr_eq(&regranted, &key));
        let moved: pb::Resource = pb::resource::Resource::ApiKey(pb::ApiKey {
            prefix: mine.into(),
            display_name: "mine".into(),
            tenant: "t".into(),
            sha256: vec![0; 32],
            subscriptions: vec!["s2".into()],
        })
        .into();
        apply(vec![moved], vec![]);
        assert_eq!(watch.changed().now_or_never(), Some(Standing::Regranted));
        regranted = gw.runtime().snapshot.keys[&key.prefix].clone();
        assert!(!Arc::ptr_eq(&regranted, &key));

        // A subscription's change (not a key's) reaches its keys too: it
        // rebuilds the key index, so every shard is told.
        let widened: pb::Resource = pb::resource::Resource::Subscription(pb::Subscription {
            name: "s2".into(),
            tenant: "t".into(),
            upstream: "up".into(),
            tools: vec!["echo".into(), "add".into()],
            plan: String::new(),
        })
        .into();
        apply(vec![widened], vec![]);
        assert_eq!(watch.changed().now_or_never(), Some(Standing::Regranted));

        apply(vec![], vec![pb::ResourceRef::new(pb::Kind::ApiKey, mine)]);
        assert_eq!(watch.changed().now_or_never(), Some(Standing::Revoked));
    }

    #[test]
    fn origins() {
        assert!(check_origin(&Headers::default(), &[]).is_ok());
        let h: Headers = [("origin", "https://evil.example")].into_iter().collect();
        assert_eq!(
            check_origin(&h, &[]).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert!(check_origin(&h, &["https://evil.example".into()]).is_ok());
        assert!(check_origin(&h, &["*".into()]).is_ok());
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:9",
        ] {
            let h: Headers = [("origin", local)].into_iter().collect();
            assert!(check_origin(&h, &[]).is_ok(), "{local}");
        }
        let h: Headers = [("origin", "http://127.0.0.1.evil.example")]
            .into_iter()
            .collect();
        assert!(check_origin(&h, &[]).is_err());
    }
}
