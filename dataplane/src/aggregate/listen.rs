//! `subscriptions/listen` on `/mcp` (2026-07-28): one stream merged from a
//! listen stream to every granted upstream that can send what was asked.
//!
//! - Each upstream is asked only for what concerns it: the client's flags,
//!   and the resource URIs that are its own (virtual URIs name their upstream).
//! - The gateway acknowledges once every upstream has (or the upstream
//!   response timeout passed), so its acknowledgement is the first message,
//!   as the spec requires; upstream acknowledgements are not relayed. It
//!   honours every list-change flag asked for (it signals them itself when
//!   the key's grants change) and the resources some upstream honoured.
//! - Notifications carry the client's listen id as `subscriptionId` and
//!   virtual URIs; a type the client did not ask for is dropped, whatever the
//!   upstream sends.
//! - The stream ends when any upstream's acknowledged stream does, so the
//!   client listens again and refreshes instead of silently missing one
//!   upstream's changes (one that refused or could not be reached when the
//!   stream opened is left out, logged). It
//!   ends with a `SubscriptionsListenResult` when torn down on purpose (an
//!   upstream closed gracefully, the gateway drains, the key's set of
//!   upstreams changed), without one when an upstream's stream broke, and
//!   with a `key_revoked` error when the key is.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use http_body::Frame;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Rewrite, Target, count_error, send_direct};
use crate::{
    body::{Body, BoxError, ChannelBody},
    error::GatewayError,
    gateway::{Call, KeyWatch, Standing},
    mcp::{self, META_SUBSCRIPTION},
    names, relay, sse,
    upstream::{self, EventMap, Payload},
};

const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";

/// The list-change flags of a `SubscriptionFilter`, and the notification each
/// one lets through.
const FLAGS: [(&str, &str); 3] = [
    ("toolsListChanged", "notifications/tools/list_changed"),
    ("promptsListChanged", "notifications/prompts/list_changed"),
    (
        "resourcesListChanged",
        "notifications/resources/list_changed",
    ),
];
const UPDATED: &str = "notifications/resources/updated";

/// What the client asked for, read strictly.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    flags: [bool; 3],
    /// Virtual URIs.
    uris: Vec<String>,
}

impl Filter {
    /// `max_uris` bounds the work of matching notifications to resources.
    pub fn parse(params: Option<&Value>, max_uris: usize) -> Result<Filter, GatewayError> {
        let bad = |m: &str| GatewayError::InvalidParams(format!("subscriptions/listen: {m}"));
        let n = params
            .and_then(|p| p.get("notifications"))
            .and_then(Value::as_object)
            .ok_or_else(|| bad("params.notifications must be an object"))?;
        let mut f = Filter::default();
        for (i, (name, _)) in FLAGS.iter().enumerate() {
            f.flags[i] = match n.get(*name) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad(&format!("notifications.{name} must be a boolean"))),
            };
        }
        match n.get("resourceSubscriptions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.len() > max_uris => {
                return Err(bad(&format!(
                    "at most {max_uris} resourceSubscriptions per stream (limits.max_resource_subscriptions)"
                )));
            }
            Some(Value::Array(a)) => {
                for u in a {
                    let u = u.as_str().ok_or_else(|| {
                        bad("notifications.resourceSubscriptions must be strings")
                    })?;
                    if !f.uris.iter().any(|x| x == u) {
                        f.uris.push(u.to_owned());
                    }
                }
            }
            Some(_) => return Err(bad("notifications.resourceSubscriptions must be an array")),
        }
        Ok(f)
    }

    /// The filter for one upstream: the flags, and its own URIs, unprefixed.
    /// `None` when it would ask that upstream for nothing.
    fn for_upstream(&self, up: &str) -> Option<Value> {
        let uris: Vec<&str> = self
            .uris
            .iter()
            .filter_map(|v| {
                names::split_uri(v)
                    .filter(|(u, _)| *u == up)
                    .map(|(_, uri)| uri)
            })
            .collect();
        let mut out = self.flags_json();
        if !uris.is_empty() {
            out.insert("resourceSubscriptions".into(), json!(uris));
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }

    fn flags_json(&self) -> Map<String, Value> {
        FLAGS
            .iter()
            .zip(self.flags)
            .filter(|(_, on)| *on)
            .map(|((name, _), _)| ((*name).to_owned(), Value::Bool(true)))
            .collect()
    }

    /// Whether a notification (with virtual URIs) is of a type asked for.
    fn wants(&self, method: &str, params: &Value) -> bool {
        if let Some(i) = FLAGS.iter().position(|(_, m)| *m == method) {
            return self.flags[i];
        }
        method == UPDATED
            && params
                .get("uri")
                .and_then(Value::as_str)
                .is_some_and(|u| self.uris.iter().any(|x| x == u))
    }
}

/// Adds the resources one upstream acknowledged (of those asked) to the
/// gateway's.
fn honour(into: &mut Filter, asked: &Filter, up: &str, acked: &Value) {
    for u in acked
        .get("resourceSubscriptions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let v = names::virtual_uri(up, u);
        if asked.uris.contains(&v) && !into.uris.contains(&v) {
            into.uris.push(v);
        }
    }
}

pub async fn listen(
    call: &Call<'_>,
    targets: &[Target],
    msg: &Value,
) -> Result<http::Response<Body>, GatewayError> {
    let asked = Filter::parse(msg.get("params"), call.rt.limits.max_resource_subscriptions)?;
    let client_id = msg["id"].clone();
    // The client's `_meta` goes along (protocol version, capabilities), less
    // its progress token, which names its one request.
    let mut meta = msg
        .pointer("/params/_meta")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("progressToken");
    }
    // Upstreams reached over a bridge have no listen stream (`bridge`).
    let speaks = join_all(targets.iter().map(|t| super::bridge::speaks(call, t))).await;
    let asks: Vec<(&Target, Value)> = targets
        .iter()
        .zip(speaks)
        .filter(|(t, speaks)| *speaks && t.version == mcp::STATELESS)
        .filter_map(|(t, _)| Some((t, asked.for_upstream(t.up.name.as_str())?)))
        .collect();
    let opened = join_all(asks.iter().map(|(t, filter)| {
        let req = json!({"jsonrpc": "2.0", "id": client_id, "method": "subscriptions/listen",
                         "params": {"_meta": meta, "notifications": filter}});
        // Spoken to directly: the bridge was ruled out above.
        async move { send_direct(call, t, &req, None).await }
    }))
    .await;

    let shared = Arc::new(Shared {
        asked,
        client_id: client_id.clone(),
        graceful: AtomicBool::new(false),
    });
    let (mid_tx, mid_rx) = mpsc::channel(16);
    let any_ended = CancellationToken::new();
    let mut acks = Vec::new();
    for ((t, _), r) in asks.iter().zip(opened) {
        let up = t.up.name.as_str();
        let resp = match r {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(upstream = %up, "subscriptions/listen failed: {e}");
                continue;
            }
        };
        match upstream::classify(&t.up, &resp) {
            Ok(Payload::Sse) if resp.status().is_success() => {}
            Ok(_) => {
                // Typically -32601: this upstream sends no notifications.
                tracing::debug!(upstream = %up, status = %resp.status(), "no listen stream");
                continue;
            }
            Err(e) => {
                count_error(call, t, &e);
                tracing::warn!(upstream = %up, "subscriptions/listen failed: {e}");
                continue;
            }
        }
        let (ack_tx, ack_rx) = oneshot::channel();
        acks.push((up.to_owned(), ack_rx));
        let feed = Feed {
            rewrite: Rewrite {
                upstream: up.into(),
                request_id: None,
                stateless: true,
                bridged: false,
            },
            ack: Some(ack_tx),
            shared: shared.clone(),
            end: any_ended.clone(),
            armed: None,
        };
        let cfg = relay::pump_cfg(
            call.rt,
            &t.up,
            Some(call.gw.draining.clone()),
            // The merge watches the key for every feed (see `Merge::run`).
            None,
        );
        upstream::spawn_pump_into(resp.into_body(), feed, cfg, (), mid_tx.clone());
    }
    drop(mid_tx);

    let (tx, rx) = mpsc::channel(16);
    let merge = Merge {
        shared,
        pumps: !acks.is_empty(),
        acks,
        mid: mid_rx,
        any_ended,
        out: tx,
        draining: call.gw.draining.clone(),
        ack_timeout: call.rt.limits.upstream_response_timeout,
        key: call.gw.watch_key(call.key),
        upstreams: granted(call.key.grants.keys().map(|n| n.as_str())),
        keepalive: call.rt.limits.sse_keepalive_interval,
        _guard: crate::metrics::GaugeGuard::new(
            call.gw
                .metrics
                .active_streams
                .with_label_values(&["listen"]),
        ),
    };
    tokio::spawn(merge.run());
    Ok(relay::sse_response(StatusCode::OK, ChannelBody::new(rx)))
}

fn granted<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = names.map(str::to_owned).collect();
    v.sort_unstable();
    v
}

/// What the merge task and every upstream's feed share.
struct Shared {
    asked: Filter,
    client_id: Value,
    /// An upstream ended its subscription with a result (on purpose).
    graceful: AtomicBool,
}

impl Shared {
    fn tag(&self, params: &mut Value) {
        if !params.is_object() {
            *params = json!({});
        }
        let meta = params
            .as_object_mut()
            .expect("made an object above")
            .entry("_meta")
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        meta[META_SUBSCRIPTION] = self.client_id.clone();
    }

    fn message(&self, method: &str, mut params: Value) -> Bytes {
        self.tag(&mut params);
        sse::Event::message(
            json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string(),
        )
        .encode()
    }

    /// The result that tells the client its subscription ended on purpose.
    fn ended(&self) -> Bytes {
        let mut v = mcp::listen_ended(&self.client_id);
        v["result"]["_meta"][super::META_SERVER_INFO] = super::server_info();
        sse::Event::message(v.to_string()).encode()
    }
}

/// One upstream's listen stream, as the client may see it.
struct Feed {
    rewrite: Rewrite,
    ack: Option<oneshot::Sender<Value>>,
    shared: Arc<Shared>,
    /// Cancelled when an acknowledged feed ends (the pump drops its map).
    end: CancellationToken,
    armed: Option<tokio_util::sync::DropGuard>,
}

impl EventMap for Feed {
    fn map(&mut self, ev: sse::Event) -> Vec<sse::Event> {
        let Ok(mut v) = serde_json::from_str::<Value>(&ev.data) else {
            return Vec::new();
        };
        let Some(method) = v.get("method").and_then(Value::as_str).map(str::to_owned) else {
            if v.get("result").is_some() && self.armed.is_some() {
                // Its `SubscriptionsListenResult`: the upstream ends on purpose.
                self.shared.graceful.store(true, Ordering::Relaxed);
            } else if v.get("error").is_some() {
                // A refusal sent as an event: this upstream honours nothing.
                tracing::debug!(upstream = %self.rewrite.upstream, error = %v["error"], "listen refused");
                self.ack = None;
            }
            return Vec::new();
        };
        if v.get("id").is_some() {
            // No server-to-client request belongs on a listen stream.
            return Vec::new();
        }
        if method == ACKNOWLEDGED {
            if let Some(tx) = self.ack.take() {
                let _ = tx.send(
                    v.pointer("/params/notifications")
                        .cloned()
                        .unwrap_or_default(),
                );
                // From now on this feed's end ends the merged stream.
                self.armed = Some(self.end.clone().drop_guard());
            }
            return Vec::new();
        }
        self.rewrite.message(&mut v);
        let params = v.get_mut("params").map(Value::take).unwrap_or_default();
        if !self.shared.asked.wants(&method, &params) {
            tracing::debug!(upstream = %self.rewrite.upstream, method, "dropped: not asked for");
            return Vec::new();
        }
        let mut params = params;
        self.shared.tag(&mut params);
        v["params"] = params;
        vec![sse::Event::message(v.to_string())]
    }

    fn on_error(&mut self, _: &GatewayError) -> Option<sse::Event> {
        None
    }
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

/// Writes the acknowledgement, then the feeds' notifications, to the client.
struct Merge {
    shared: Arc<Shared>,
    acks: Vec<(String, oneshot::Receiver<Value>)>,
    pumps: bool,
    mid: mpsc::Receiver<FrameResult>,
    any_ended: CancellationToken,
    out: mpsc::Sender<FrameResult>,
    draining: CancellationToken,
    ack_timeout: std::time::Duration,
    keepalive: std::time::Duration,
    key: KeyWatch,
    /// The upstreams the key was granted when the stream opened.
    upstreams: Vec<String>,
    _guard: crate::metrics::GaugeGuard,
}

impl Merge {
    async fn run(mut self) {
        let mut honoured = Filter {
            flags: self.shared.asked.flags,
            uris: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        for (up, rx) in std::mem::take(&mut self.acks) {
            let acked = tokio::select! {
                r = tokio::time::timeout_at(deadline, rx) => r,
                () = self.out.closed() => return,
            };
            match acked {
                Ok(Ok(acked)) => honour(&mut honoured, &self.shared.asked, &up, &acked),
                // A feed that ended or never acknowledged honours nothing.
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(upstream = %up, "no subscription acknowledgement in time"),
            }
        }
        let mut ack = json!({"notifications": honoured.flags_json()});
        if !honoured.uris.is_empty() {
            ack["notifications"]["resourceSubscriptions"] = json!(honoured.uris);
        }
        if !self.send(self.shared.message(ACKNOWLEDGED, ack)).await {
            return;
        }
        let keepalive = sse::keepalive();
        let mut tick = tokio::time::interval(self.keepalive);
        tick.tick().await;
        let mut on_purpose = false;
        loop {
            tokio::select! {
                f = self.mid.recv(), if self.pumps => match f {
                    // Each feed's keep-alives would repeat ours.
                    Some(Ok(f)) if f.data_ref() == Some(&keepalive) => {}
                    Some(f) => if !self.send_frame(f).await { return },
                    None => break,
                },
                () = self.any_ended.cancelled(), if self.pumps => {
                    // What the ended feed sent before it ended is already queued.
                    while let Ok(f) = self.mid.try_recv() {
                        if !self.send_frame(f).await {
                            return;
                        }
                    }
                    break;
                }
                () = self.draining.cancelled() => {
                    while let Ok(f) = self.mid.try_recv() {
                        if !self.send_frame(f).await {
                            return;
                        }
                    }
                    break;
                }
                standing = self.key.changed() => match standing {
                    Standing::Same => {}
                    Standing::Revoked => {
                        let err = GatewayError::KeyRevoked.rpc_response(Some(&self.shared.client_id));
                        let _ = self.send(sse::Event::message(err.to_string()).encode()).await;
                        return;
                    }
                    Standing::Regranted => {
                        // The virtual server's lists follow the key's grants.
                        for ((_, method), on) in FLAGS.iter().zip(self.shared.asked.flags) {
                            if on && !self.send(self.shared.message(method, json!({}))).await {
                                return;
                            }
                        }
                        // Other upstreams: listen again to hear from them.
                        if granted(self.key.key().grants.keys().map(|n| n.as_str())) != self.upstreams {
                            on_purpose = true;
                            break;
                        }
                    }
                },
                _ = tick.tick() => if !self.send(keepalive.clone()).await { return },
                () = self.out.closed() => return,
            }
        }
        if on_purpose
            || self.draining.is_cancelled()
            || self.shared.graceful.load(Ordering::Relaxed)
        {
            let _ = self.send(self.shared.ended()).await;
        }
    }

    async fn send(&self, b: Bytes) -> bool {
        self.out.send(Ok(Frame::data(b))).await.is_ok()
    }

    async fn send_frame(&self, f: FrameResult) -> bool {
        self.out.send(f).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 256;

    #[test]
    fn each_upstream_is_asked_for_its_own_resources() {
        let f = Filter::parse(Some(&json!({"notifications": {
            "toolsListChanged": true,
            "resourceSubscriptions": ["stoa://a/test://x", "stoa://b/test://y", "stoa://a/test://x", "file:///z"],
        }})), MAX)
        .unwrap();
        assert_eq!(
            f.for_upstream("a"),
            Some(json!({"toolsListChanged": true, "resourceSubscriptions": ["test://x"]}))
        );
        assert_eq!(f.for_upstream("c"), Some(json!({"toolsListChanged": true})));
        let only_uris = Filter::parse(
            Some(&json!({"notifications": {"resourceSubscriptions": ["stoa://a/test://x"]}})),
            MAX,
        )
        .unwrap();
        assert_eq!(only_uris.for_upstream("b"), None, "nothing to ask b for");
    }

    #[test]
    fn acknowledged_resources_are_the_union_of_the_upstreams() {
        let asked = Filter::parse(
            Some(&json!({"notifications": {
            "resourceSubscriptions": ["stoa://b/test://y", "stoa://c/test://y"]}})),
            MAX,
        )
        .unwrap();
        let mut h = Filter::default();
        honour(&mut h, &asked, "a", &json!({"toolsListChanged": true}));
        honour(
            &mut h,
            &asked,
            "b",
            &json!({"promptsListChanged": true, "resourceSubscriptions": ["test://y", "test://unasked"]}),
        );
        honour(
            &mut h,
            &asked,
            "c",
            &json!({"resourceSubscriptions": ["test://y"]}),
        );
        assert_eq!(
            h.uris,
            vec![
                "stoa://b/test://y".to_owned(),
                "stoa://c/test://y".to_owned()
            ],
            "the union, of what was asked only"
        );
    }

    #[test]
    fn only_what_was_asked_gets_through() {
        let f = Filter::parse(
            Some(&json!({"notifications": {
            "promptsListChanged": true, "resourceSubscriptions": ["stoa://a/test://x"]}})),
            MAX,
        )
        .unwrap();
        assert!(f.wants("notifications/prompts/list_changed", &json!({})));
        assert!(!f.wants("notifications/tools/list_changed", &json!({})));
        assert!(f.wants(UPDATED, &json!({"uri": "stoa://a/test://x"})));
        assert!(!f.wants(UPDATED, &json!({"uri": "stoa://a/test://other"})));
        assert!(!f.wants("notifications/message", &json!({})));
    }

    #[test]
    fn a_filter_that_is_not_one_is_refused() {
        for bad in [
            json!({}),
            json!({"notifications": true}),
            json!({"notifications": {"toolsListChanged": 1}}),
            json!({"notifications": {"resourceSubscriptions": "stoa://a/x"}}),
            json!({"notifications": {"resourceSubscriptions": [7]}}),
            json!({"notifications": {"resourceSubscriptions":
                vec!["stoa://a/x"; MAX + 1]}}),
        ] {
            assert!(Filter::parse(Some(&bad), MAX).is_err(), "{bad}");
        }
    }
}
