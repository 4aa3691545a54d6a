//! The gateway's configuration file (YAML), as written by an operator.
//!
//! These types are the file format only: `model::Snapshot::build` lowers the
//! resource part into the in-memory model the request path reads, and the
//! control plane's config stream will lower into that same model.
//! `stoa-gateway schema` prints the JSON Schema generated from these types.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the gateway listens.
    #[serde(default)]
    pub listeners: Listeners,
    /// Bounds on everything a peer can make the gateway hold or wait for.
    #[serde(default)]
    pub limits: Limits,
    /// Sealing of `Mcp-Session-Id` so that any replica can serve any session.
    #[serde(default)]
    pub sessions: Sessions,
    /// Browser origins allowed to call the MCP endpoint, besides loopback
    /// origins (`http://localhost:*`, `127.0.0.1`, `[::1]`). Requests that carry
    /// any other `Origin` are refused with 403 (DNS-rebinding protection);
    /// requests without `Origin` (non-browser agents) are allowed. `*` allows all.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// How often the config file (and TLS files) are checked for changes.
    /// SIGHUP reloads immediately.
    #[serde(
        default = "defaults::watch_interval",
        deserialize_with = "dur::deserialize"
    )]
    #[schemars(with = "String")]
    pub watch_interval: Duration,
    /// PEM file of CA certificates trusted for `https://` upstreams besides
    /// the public web roots (an internal PKI). Read at start.
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Take tenants, upstreams, subscriptions, keys and session keys from a
    /// control plane's config stream instead of this file (which then must
    /// not list any).
    pub control_plane: Option<ControlPlane>,
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Cleartext HTTP/1.1 and h2c (prior knowledge) on one port.
    pub plain: Option<SocketAddr>,
    /// TLS (HTTP/1.1 and HTTP/2 by ALPN), plus HTTP/3 on the same port number.
    pub tls: Option<TlsListener>,
    /// Optional separate listener for /healthz, /readyz and /metrics. When
    /// absent, those paths are served on every listener.
    pub admin: Option<SocketAddr>,
    /// Threads that serve connections, each with a runtime of its own; a
    /// connection stays on the thread that took it, with that thread's pool
    /// of upstream connections. Default: one per CPU. At most 256 (QUIC
    /// connection IDs name their worker in one byte).
    #[serde(default, deserialize_with = "workers")]
    #[schemars(range(min = 1, max = 256))]
    pub workers: Option<usize>,
}

/// The most `listeners.workers` may be.
pub const MAX_WORKERS: usize = 256;

fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = Option::<usize>::deserialize(d)?;
    match n {
        Some(n) if n == 0 || n > MAX_WORKERS => Err(serde::de::Error::custom(format!(
            "workers: {n} is out of range (1 to {MAX_WORKERS})"
        ))),
        n => Ok(n),
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            plain: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            tls: None,
            admin: None,
            workers: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub addr: SocketAddr,
    /// PEM certificate chain. With `key`; when both are absent a development
    /// CA and certificate are generated under `dev_cert_dir`.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Where generated development certificates are kept (and reused).
    #[serde(default = "defaults::dev_cert_dir")]
    pub dev_cert_dir: PathBuf,
    /// Serve HTTP/3 over QUIC on the same port number (UDP).
    #[serde(default = "defaults::yes")]
    pub http3: bool,
}

/// Every bound the gateway enforces. Durations are written like `250ms`, `30s`, `5m`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest JSON response accepted from an upstream (502 beyond).
    pub max_response_bytes: usize,
    /// Largest single SSE event accepted from an upstream (the stream ends with an error event beyond).
    pub max_sse_event_bytes: usize,
    /// Largest request head (request line + headers) accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Resources one `subscriptions/listen` stream on `/mcp` may watch
    /// (`invalid_params` beyond).
    pub max_resource_subscriptions: usize,
    /// Upstream sessions a replica holds for 2026-07-28 clients of `/mcp`
    /// whose upstreams speak only the session-based revisions (least
    /// recently used dropped beyond).
    pub max_bridged_sessions: usize,
    /// Such a session unused for this long is opened anew when next needed.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub bridged_session_idle_timeout: Duration,
    /// Concurrent streams per HTTP/2 or HTTP/3 connection.
    pub max_concurrent_streams: u32,
    /// Concurrent connections per listener; further connections wait in the accept queue.
    pub max_connections: usize,
    /// Time allowed for a request head to arrive whole once its first
    /// byte has (slowloris bound; HTTP/1.1 connections are then closed),
    /// and for a TLS handshake.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// Time allowed to send the request body.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub body_read_timeout: Duration,
    /// Longest a write to an HTTP/1.1 client may wait because the client
    /// reads nothing (its socket buffer is full): the connection is then
    /// closed. Streams that are merely quiet are not affected. On HTTP/2,
    /// how long a PING may go unanswered (see `ping_interval`).
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub send_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// Time allowed to establish a TCP connection to an upstream.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub upstream_connect_timeout: Duration,
    /// Time allowed for an upstream to start answering (status and headers).
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub upstream_response_timeout: Duration,
    /// A pooled upstream connection unused for this long is not reused. Keep
    /// it below the upstreams' own keep-alive timeout (Node's and uvicorn's:
    /// 5s): a tool call sent on a connection the upstream is closing fails
    /// (retryable) rather than being sent twice. Read at start.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub upstream_idle_timeout: Duration,
    /// Time allowed to receive a whole JSON (non-streaming) upstream answer.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// An SSE stream on which the upstream sends nothing for this long is closed.
    /// Long tool calls keep their stream: keep-alives flow to the client meanwhile.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub stream_idle_timeout: Duration,
    /// Interval of SSE keep-alive comments sent to clients on quiet streams.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub sse_keepalive_interval: Duration,
    /// Interval of HTTP/2 PING frames to clients. A client that does not
    /// answer one within `send_timeout` is closed: HTTP/2's bound on a
    /// client that reads nothing.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub ping_interval: Duration,
    /// On shutdown, how long in-flight requests and streams may take to finish.
    #[serde(deserialize_with = "dur::deserialize")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_response_bytes: 16 << 20,
            max_sse_event_bytes: 4 << 20,
            max_header_bytes: 16 << 10,
            max_resource_subscriptions: 256,
            max_bridged_sessions: 10_000,
            bridged_session_idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 256,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(4),
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(600),
            sse_keepalive_interval: Duration::from_secs(15),
            ping_interval: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    /// 32-byte key, base64. All replicas that serve the same agents must share it.
    /// `STOA_SESSION_KEY` overrides it. When absent, a random key is made at
    /// start-up and sessions survive neither a restart nor a change of replica.
    pub key: Option<String>,
    /// Older keys still accepted for opening sessions (key rotation).
    #[serde(default)]
    pub previous_keys: Vec<String>,
    /// A session is refused after this long (the agent re-initializes).
    #[serde(
        default = "defaults::session_ttl",
        deserialize_with = "dur::deserialize"
    )]
    #[schemars(with = "String")]
    pub ttl: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            key: None,
            previous_keys: Vec::new(),
            ttl: defaults::session_ttl(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
}

#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `[a-z0-9-]`, 1..=32 characters; it names `/mcp/<name>` and prefixes
    /// aggregated tool names.
    pub name: String,
    /// The upstream's MCP endpoint, `http://` or `https://`.
    pub url: String,
    /// Owning tenant; absent means shared by every tenant.
    pub tenant: Option<String>,
    /// Headers injected on every request to this upstream (credentials).
    /// `${VAR}` is replaced by the environment variable `VAR` at load time.
    /// Values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("tenant", &self.tenant)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub tenant: String,
    pub upstream: String,
    /// Tool names granted; `["*"]` (the default) grants every tool.
    #[serde(default = "defaults::all_tools")]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A human name for logs and metrics.
    pub name: String,
    pub tenant: String,
    /// The public 8-character prefix of the key (`stoa_<prefix>_<secret>`).
    pub prefix: String,
    /// `sha256:<64 hex>` of the whole key; `stoa-gateway hash-key` prints it.
    pub hash: String,
    /// Subscriptions (of the same tenant) this key uses.
    pub subscriptions: Vec<String>,
}

/// The control plane this gateway takes its resources from.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// The config-stream endpoint (`stoa-control --xds-listen`), e.g. `http://127.0.0.1:7071`.
    pub url: String,
    /// The gateway token. `${VAR}` is replaced from the environment;
    /// `STOA_GATEWAY_TOKEN` overrides it. Never logged.
    pub token: Option<String>,
    /// This gateway's name in the control plane (default: the host name).
    /// `STOA_GATEWAY_ID` overrides it.
    pub gateway_id: Option<String>,
    /// The last applied configuration is kept here, so that a gateway that
    /// starts while the control plane is down serves it (and is ready).
    pub cache_file: Option<PathBuf>,
    /// First reconnect delay; it doubles per failed attempt, jittered.
    #[serde(
        default = "defaults::backoff_min",
        deserialize_with = "dur::deserialize"
    )]
    #[schemars(with = "String")]
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    #[serde(
        default = "defaults::backoff_max",
        deserialize_with = "dur::deserialize"
    )]
    #[schemars(with = "String")]
    pub backoff_max: Duration,
    /// Time allowed to open the stream's connection.
    #[serde(
        default = "defaults::cp_connect_timeout",
        deserialize_with = "dur::deserialize"
    )]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Largest message accepted from the control plane.
    #[serde(default = "defaults::cp_max_message")]
    pub max_message_bytes: usize,
    /// Most resources one update may hold.
    #[serde(default = "defaults::cp_max_resources")]
    pub max_resources: usize,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("gateway_id", &self.gateway_id)
            .field("cache_file", &self.cache_file)
            .finish_non_exhaustive()
    }
}

mod defaults {
    use std::{path::PathBuf, time::Duration};
    pub fn watch_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn session_ttl() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub fn dev_cert_dir() -> PathBuf {
        PathBuf::from("target/stoa-dev-tls")
    }
    pub fn yes() -> bool {
        true
    }
    pub fn backoff_min() -> Duration {
        Duration::from_millis(250)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(10)
    }
    pub fn cp_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn cp_max_message() -> usize {
        16 << 20
    }
    pub fn cp_max_resources() -> usize {
        10_000_000
    }
    pub fn all_tools() -> Vec<String> {
        vec!["*".into()]
    }
}

/// `humantime` durations (`250ms`, `30s`, `5m`) in serde.
mod dur {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} (write e.g. 250ms, 30s, 5m): {e}"
            ))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Syntax {
        path: PathBuf,
        source: serde_norway::Error,
    },
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<FileConfig, serde_norway::Error> {
        let cfg: FileConfig = serde_norway::from_str(text)?;
        // A zero interval would make a timer spin or panic, a zero timeout
        // fail every connection. (Where zero means something, e.g. a drain
        // that does not wait, it is not listed.)
        let l = &cfg.limits;
        let cp =
            |f: fn(&ControlPlane) -> Duration| cfg.control_plane.as_ref().map_or(Duration::MAX, f);
        for (name, d) in [
            ("control_plane.connect_timeout", cp(|c| c.connect_timeout)),
            // A zero backoff reconnects in a tight loop.
            ("control_plane.backoff_min", cp(|c| c.backoff_min)),
            ("control_plane.backoff_max", cp(|c| c.backoff_max)),
            ("watch_interval", cfg.watch_interval),
            ("sessions.ttl", cfg.sessions.ttl),
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.body_read_timeout", l.body_read_timeout),
            ("limits.send_timeout", l.send_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            (
                "limits.upstream_connect_timeout",
                l.upstream_connect_timeout,
            ),
            (
                "limits.upstream_response_timeout",
                l.upstream_response_timeout,
            ),
            ("limits.request_timeout", l.request_timeout),
            ("limits.stream_idle_timeout", l.stream_idle_timeout),
            ("limits.sse_keepalive_interval", l.sse_keepalive_interval),
            ("limits.ping_interval", l.ping_interval),
        ] {
            if d.is_zero() {
                return Err(serde::de::Error::custom(format!(
                    "{name} must be more than zero"
                )));
            }
        }
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Syntax {
            path: path.to_owned(),
            source,
        })
    }

    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(FileConfig);
        serde_json::to_string_pretty(&schema).expect("a schema always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_safe_defaults() {
        let c = FileConfig::parse("{}").unwrap();
        assert_eq!(
            c.listeners.plain,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        assert_eq!(c.limits.max_body_bytes, 4 << 20);
        assert_eq!(
            c.sessions.ttl,
            Duration::from_secs(24 * 3600),
            "an absent section gets the field defaults"
        );
        assert_eq!(c.watch_interval, Duration::from_secs(2));
        assert!(c.api_keys.is_empty());
    }

    #[test]
    fn durations_and_unknown_fields() {
        let c = FileConfig::parse("limits: {request_timeout: 250ms}").unwrap();
        assert_eq!(c.limits.request_timeout, Duration::from_millis(250));
        let err = FileConfig::parse("limits: {request_timeout: soon}").unwrap_err();
        assert!(
            err.to_string().contains("invalid duration \"soon\""),
            "{err}"
        );
        let err = FileConfig::parse("listners: {}").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn zero_timeouts_and_intervals_are_refused_by_name() {
        // A zero interval would make a timer spin or panic; a zero timeout
        // fails every connection.
        for (field, name) in [
            (
                "limits: {sse_keepalive_interval: 0s}",
                "limits.sse_keepalive_interval",
            ),
            ("limits: {ping_interval: 0ms}", "limits.ping_interval"),
            ("limits: {send_timeout: 0s}", "limits.send_timeout"),
            (
                "limits: {header_read_timeout: 0s}",
                "limits.header_read_timeout",
            ),
            ("watch_interval: 0s", "watch_interval"),
            (
                "control_plane: {url: \"http://cp:8081\", backoff_min: 0s}",
                "control_plane.backoff_min",
            ),
        ] {
            let e = FileConfig::parse(field)
                .err()
                .unwrap_or_else(|| panic!("{field} accepted"));
            assert!(
                e.to_string()
                    .contains(&format!("{name} must be more than zero")),
                "{e}"
            );
        }
        // Where zero means something (never reuse, do not wait), it stays allowed.
        let c =
            FileConfig::parse("limits: {upstream_idle_timeout: 0s, drain_timeout: 0s}").unwrap();
        assert!(c.limits.drain_timeout.is_zero());
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway.yaml");
        let cfg = FileConfig::load(&path).unwrap();
        let env = |v: &str| (v == "GITHUB_MCP_TOKEN").then(|| "t".to_owned());
        let (snap, rejected) = crate::model::Snapshot::build_with_env(&cfg, &env);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!((snap.upstreams.len(), snap.keys.len()), (2, 1));
    }

    #[test]
    fn the_committed_schema_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stoa-gateway.schema.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed.trim() == FileConfig::json_schema().trim(),
            "dataplane/stoa-gateway.schema.json is stale: run `cargo run -p stoa-gateway -- schema > dataplane/stoa-gateway.schema.json`"
        );
    }

    #[test]
    fn workers_out_of_range_are_refused_by_name() {
        for bad in ["0", "257"] {
            let e = FileConfig::parse(&format!("listeners: {{workers: {bad}}}"))
                .err()
                .unwrap_or_else(|| panic!("workers: {bad} accepted"));
            assert!(e.to_string().contains("out of range (1 to 256)"), "{e}");
        }
        let ok = FileConfig::parse("listeners: {workers: 256}").unwrap();
        assert_eq!(ok.listeners.workers, Some(256));
        let default = FileConfig::parse("listeners: {plain: 127.0.0.1:0}").unwrap();
        assert_eq!(default.listeners.workers, None);
    }

    #[test]
    fn upstream_debug_hides_credentials() {
        let c = FileConfig::parse(
            "upstreams: [{name: a, url: 'http://x/mcp', headers: {Authorization: 'Bearer s3cret'}}]",
        )
        .unwrap();
        let shown = format!("{:?}", c.upstreams[0]);
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
