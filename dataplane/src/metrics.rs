//! Prometheus metrics. Label values are bounded: JSON-RPC methods outside
//! the MCP method set are counted as `other`, upstreams come from config,
//! and tool names (which clients choose) are capped per upstream.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    pub quic_handovers: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_rejected: IntGauge,
    pub config_revision: IntGauge,
    pub config_updates: IntCounterVec,
    pub control_plane_connected: IntGauge,
    pub config_bytes: prometheus::IntCounter,
    /// Set when rendered, from `aggregate::Bridges`.
    pub bridged_sessions: IntGauge,
    /// Tool label values seen, by upstream (see `MAX_TOOL_LABELS`).
    tool_labels: Mutex<HashMap<Box<str>, HashSet<Box<str>>>>,
}

/// Tool names come from clients (a call may name a tool no upstream has):
/// each upstream gets at most this many tool label values, and calls of
/// further names are counted as tool `other`.
pub const MAX_TOOL_LABELS: usize = 256;
/// A longer name (MCP names are at most 128 characters) is counted as `other`.
const MAX_TOOL_LABEL_BYTES: usize = 128;

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
    "subscriptions/listen",
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
        let quic_handovers = IntCounterVec::new(
            Opts::new(
                "stoa_quic_handovers_total",
                "QUIC datagrams that reached another worker's socket (the client's address \
                 changed): handed over to the worker that holds their connection, or dropped \
                 on a full inbox",
            ),
            &["outcome"],
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
        let bridged_sessions = IntGauge::new(
            "stoa_bridged_sessions",
            "Upstream sessions this replica holds for 2026-07-28 clients of /mcp",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bridged_sessions.clone()),
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
            Box::new(quic_handovers.clone()),
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
            quic_handovers,
            config_reloads,
            config_rejected,
            config_revision,
            config_updates,
            control_plane_connected,
            config_bytes,
            bridged_sessions,
            tool_labels: Mutex::default(),
        }
    }

    /// `tool` as a label value of `upstream`'s series, or `other` once the
    /// upstream has `MAX_TOOL_LABELS` others (or if it is over-long).
    pub fn tool_label<'t>(&self, upstream: &str, tool: &'t str) -> &'t str {
        if tool.len() > MAX_TOOL_LABEL_BYTES {
            return "other";
        }
        let mut seen = self
            .tool_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tools = match seen.get_mut(upstream) {
            Some(t) => t,
            None => seen.entry(upstream.into()).or_default(),
        };
        if tools.contains(tool) {
            tool
        } else if tools.len() < MAX_TOOL_LABELS {
            tools.insert(tool.into());
            tool
        } else {
            "other"
        }
    }

    /// Counts a `tools/call` the gateway refused (the key may not call it).
    pub fn tool_refused(&self, upstream: &str, tool: &str, recent: Option<&Recent<IntCounter>>) {
        self.count_tool(upstream, tool, "refused", recent);
    }

    fn count_tool(
        &self,
        upstream: &str,
        tool: &str,
        outcome: &'static str,
        recent: Option<&Recent<IntCounter>>,
    ) {
        let lookup = || {
            self.tool_calls
                .with_label_values(&[upstream, self.tool_label(upstream, tool), outcome])
        };
        Recent::with(recent, &[upstream, tool, outcome], lookup, IntCounter::inc);
    }

    /// Counts a `tools/call` the gateway relayed, by how the upstream answered.
    pub fn tool_relayed(
        &self,
        upstream: &str,
        tool: &str,
        status: http::StatusCode,
        recent: Option<&Recent<IntCounter>>,
    ) {
        let outcome = if status.is_success() {
            "relayed"
        } else {
            "upstream_error"
        };
        self.count_tool(upstream, tool, outcome, recent);
    }

    /// Counts a finished MCP request and its latency.
    pub fn request_done(&self, labels: [&str; 4], seconds: f64, recent: Option<&RecentRequest>) {
        let [route, method, upstream, _] = labels;
        Recent::with(
            recent.map(|r| &r.requests),
            &labels,
            || self.requests.with_label_values(&labels),
            IntCounter::inc,
        );
        Recent::with(
            recent.map(|r| &r.latency),
            &labels[..3],
            || self.latency.with_label_values(&[route, method, upstream]),
            |h| h.observe(seconds),
        );
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

/// A connection's last-used series of one metric, by its label values: a
/// request counted like the one before it skips the lookup (hashing the
/// labels under a read lock). Series are never removed, so a remembered
/// one stays registered.
pub struct Recent<M>(Mutex<Option<(Labels, M)>>);

type Labels = Box<[Box<str>]>;

impl<M> Default for Recent<M> {
    fn default() -> Self {
        Recent(Mutex::new(None))
    }
}

impl<M> Recent<M> {
    /// Applies `f` to the series with `labels`: the one `recent` remembers,
    /// or else the one `lookup` finds (then remembered).
    pub fn with(
        recent: Option<&Self>,
        labels: &[&str],
        lookup: impl FnOnce() -> M,
        f: impl FnOnce(&M),
    ) {
        let Some(recent) = recent else {
            return f(&lookup());
        };
        let mut last = recent.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((known, m)) = &*last
            && known.len() == labels.len()
            && known.iter().zip(labels).all(|(k, l)| **k == **l)
        {
            return f(m);
        }
        let m = lookup();
        f(&m);
        *last = Some((labels.iter().map(|l| Box::from(*l)).collect(), m));
    }
}

/// The series a connection's requests are counted in (`Metrics::request_done`).
#[derive(Default)]
pub struct RecentRequest {
    requests: Recent<IntCounter>,
    latency: Recent<Histogram>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_are_capped_per_upstream() {
        let m = Metrics::new();
        for i in 0..MAX_TOOL_LABELS {
            assert_eq!(m.tool_label("a", &format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.tool_label("a", "one-more"), "other");
        assert_eq!(
            m.tool_label("a", "t7"),
            "t7",
            "known names keep their label"
        );
        assert_eq!(m.tool_label("b", "one-more"), "one-more", "per upstream");
        assert_eq!(m.tool_label("b", &"x".repeat(129)), "other");
        m.tool_relayed("a", "another", http::StatusCode::OK, None);
        let text = m.render();
        assert!(text.contains(r#"tool="other""#), "{text}");
        assert!(!text.contains(r#"tool="another""#));
    }

    #[test]
    fn recent_series_skip_the_lookup() {
        let recent = Recent::<IntCounter>::default();
        let c = IntCounter::new("c", "c").unwrap();
        let lookups = std::cell::Cell::new(0);
        let lookup = || {
            lookups.set(lookups.get() + 1);
            c.clone()
        };
        for _ in 0..3 {
            Recent::with(Some(&recent), &["a", "b"], lookup, IntCounter::inc);
        }
        assert_eq!((lookups.get(), c.get()), (1, 3));
        Recent::with(Some(&recent), &["a", "c"], lookup, IntCounter::inc);
        Recent::with(Some(&recent), &["a"], lookup, IntCounter::inc);
        assert_eq!((lookups.get(), c.get()), (3, 5));
    }

    #[test]
    fn requests_are_counted_with_or_without_a_memo() {
        let m = Metrics::new();
        let recent = RecentRequest::default();
        m.request_done(["upstream", "ping", "ref", "200"], 0.001, Some(&recent));
        m.request_done(["upstream", "ping", "ref", "200"], 0.001, Some(&recent));
        m.request_done(["upstream", "ping", "ref", "500"], 0.001, Some(&recent));
        m.request_done(["upstream", "ping", "ref", "200"], 0.001, None);
        let ok = m
            .requests
            .with_label_values(&["upstream", "ping", "ref", "200"]);
        let bad = m
            .requests
            .with_label_values(&["upstream", "ping", "ref", "500"]);
        assert_eq!((ok.get(), bad.get()), (3, 1));
        let h = m.latency.with_label_values(&["upstream", "ping", "ref"]);
        assert_eq!(h.get_sample_count(), 4);
    }
}
