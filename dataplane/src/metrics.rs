//! Prometheus metrics. Label values are bounded: JSON-RPC methods outside
//! the MCP method set are counted as `other`, upstreams and tools come from
//! config or from upstream tool lists, never from arbitrary client input.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub tool_calls: IntCounterVec,
    pub active_streams: IntGaugeVec,
    pub connections: IntGaugeVec,
    pub sessions: IntCounterVec,
    pub refusals: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_rejected: IntGauge,
    pub config_revision: IntGauge,
    pub config_updates: IntCounterVec,
    pub control_plane_connected: IntGauge,
    pub config_bytes: prometheus::IntCounter,
}

const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// A label value for a JSON-RPC method that cannot grow the series count.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "stoa_requests_total",
                "MCP HTTP requests by route, JSON-RPC method, upstream and HTTP status",
            ),
            &["route", "method", "upstream", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "stoa_request_duration_seconds",
                "Time from request head to response head (streams: to the start of the stream)",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route", "method", "upstream"],
        )
        .expect("valid metric");
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "stoa_tool_calls_total",
                "tools/call requests by upstream, tool and outcome",
            ),
            &["upstream", "tool", "outcome"],
        )
        .expect("valid metric");
        let active_streams = IntGaugeVec::new(
            Opts::new(
                "stoa_active_streams",
                "Open SSE streams relayed to clients, by kind (post, get)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let connections = IntGaugeVec::new(
            Opts::new(
                "stoa_active_connections",
                "Open client connections by transport (tcp, tls, quic)",
            ),
            &["transport"],
        )
        .expect("valid metric");
        let sessions = IntCounterVec::new(
            Opts::new(
                "stoa_sessions_total",
                "MCP sessions opened and closed through this replica (sessions are not pinned to a replica)",
            ),
            &["event"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "stoa_refusals_total",
                "Requests refused by the gateway, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "stoa_upstream_errors_total",
                "Upstream failures by upstream and reason",
            ),
            &["upstream", "reason"],
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("stoa_config_reloads_total", "Config reloads by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let config_rejected = IntGauge::new(
            "stoa_config_rejected_resources",
            "Resources of the current config that were rejected",
        )
        .expect("valid metric");
        let config_revision = IntGauge::new(
            "stoa_config_revision",
            "The control-plane config revision this gateway serves (0: none)",
        )
        .expect("valid metric");
        let config_updates = IntCounterVec::new(
            Opts::new(
                "stoa_config_updates_total",
                "Config-stream updates by outcome (applied, rejected)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let control_plane_connected = IntGauge::new(
            "stoa_control_plane_connected",
            "1 while the config stream to the control plane is open",
        )
        .expect("valid metric");
        let config_bytes = prometheus::IntCounter::new(
            "stoa_config_stream_bytes_total",
            "Bytes of config-stream updates received from the control plane (encoded messages)",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_bytes.clone()),
            Box::new(config_revision.clone()),
            Box::new(config_updates.clone()),
            Box::new(control_plane_connected.clone()),
            Box::new(latency.clone()),
            Box::new(tool_calls.clone()),
            Box::new(active_streams.clone()),
            Box::new(connections.clone()),
            Box::new(sessions.clone()),
            Box::new(refusals.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_rejected.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            latency,
            tool_calls,
            active_streams,
            connections,
            sessions,
            refusals,
            upstream_errors,
            config_reloads,
            config_rejected,
            config_revision,
            config_updates,
            control_plane_connected,
            config_bytes,
        }
    }

    /// Counts a `tools/call` the gateway relayed, by how the upstream answered.
    pub fn tool_relayed(&self, upstream: &str, tool: &str, status: http::StatusCode) {
        let outcome = if status.is_success() {
            "relayed"
        } else {
            "upstream_error"
        };
        self.tool_calls
            .with_label_values(&[upstream, tool, outcome])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements a gauge when dropped, so streams that end any way are counted out.
pub struct GaugeGuard(pub IntGauge);

impl GaugeGuard {
    pub fn new(g: IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
