//! Change notifications: `subscriptions/listen` on the 2026-07-28 wire, the
//! standalone GET stream on the 2025 wire.
//!
//! The catalogue never changes by itself, so changes are signalled by the
//! `test_trigger_*` tools (the names the conformance suite calls). A signal
//! goes on a process-wide bus; every open listen stream that asked for that
//! kind of notification relays it, tagged with its subscription id.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::http::{self as web, Body};
use super::rpc::{self, RpcError};
use super::sse::Sink;
use super::{State, session::Session};

const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";
/// An SSE comment this often keeps idle listen streams open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Something that changed.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    Tools,
    Prompts,
    Resource(String),
}

impl Change {
    fn notification(&self) -> (&'static str, Value) {
        match self {
            Change::Tools => ("notifications/tools/list_changed", json!({})),
            Change::Prompts => ("notifications/prompts/list_changed", json!({})),
            Change::Resource(uri) => ("notifications/resources/updated", json!({ "uri": uri })),
        }
    }
}

/// Fans signals out to every open listen stream.
pub(crate) struct Bus(broadcast::Sender<Change>);

impl Bus {
    pub fn new() -> Bus {
        Bus(broadcast::channel(64).0)
    }

    /// Tells every listener, and the calling session's GET stream if it has one.
    pub fn publish(&self, change: Change, session: Option<&Session>) {
        if let Some(s) = session
            && match &change {
                Change::Resource(uri) => s.is_subscribed(uri),
                Change::Tools | Change::Prompts => true,
            }
        {
            let (method, params) = change.notification();
            s.notify_standalone(method, &params);
        }
        // No listener is not an error.
        let _ = self.0.send(change);
    }
}

/// What one listen stream asked for (and, as the reference honours all of
/// it but resource-list changes, what it is acknowledged).
#[derive(Debug, PartialEq)]
struct Filter {
    tools: bool,
    prompts: bool,
    uris: Vec<String>,
}

impl Filter {
    fn parse(params: &Value) -> Result<Filter, RpcError> {
        let n = params
            .get("notifications")
            .and_then(Value::as_object)
            .ok_or_else(|| RpcError::invalid_params("params.notifications must be an object"))?;
        let flag = |k: &str| match n.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(RpcError::invalid_params(format!(
                "notifications.{k} must be a boolean"
            ))),
        };
        let uris = match n.get("resourceSubscriptions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    RpcError::invalid_params("notifications.resourceSubscriptions must be strings")
                })?,
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "notifications.resourceSubscriptions must be an array",
                ));
            }
        };
        // Validated, but not honoured: the resource list never changes.
        flag("resourcesListChanged")?;
        Ok(Filter {
            tools: flag("toolsListChanged")?,
            prompts: flag("promptsListChanged")?,
            uris,
        })
    }

    fn honoured(&self) -> Value {
        let mut out = serde_json::Map::new();
        if self.tools {
            out.insert("toolsListChanged".into(), true.into());
        }
        if self.prompts {
            out.insert("promptsListChanged".into(), true.into());
        }
        if !self.uris.is_empty() {
            out.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(out)
    }

    fn wants(&self, c: &Change) -> bool {
        match c {
            Change::Tools => self.tools,
            Change::Prompts => self.prompts,
            Change::Resource(uri) => self.uris.iter().any(|u| u == uri),
        }
    }
}

/// Opens a listen stream: the acknowledgement first, then what was asked for,
/// until the client goes away.
pub(crate) fn open(state: &Arc<State>, id: &RawValue, params: &Value) -> http::Response<Body> {
    let filter = match Filter::parse(params) {
        Ok(f) => f,
        Err(e) => return web::error(e.modern_status(), Some(id), &e),
    };
    let subscription: Value = serde_json::from_str(id.get()).unwrap_or(Value::Null);
    let meta = json!({ META_SUBSCRIPTION: subscription });
    let (mut sink, body) = Sink::direct(state.next_stream());
    // Subscribed before the acknowledgement: nothing signalled after it is missed.
    let mut changes = state.bus.0.subscribe();
    let ack = json!({ "_meta": meta, "notifications": filter.honoured() });
    let loose = state.opts.ignore_listen_filter;
    sink.send(&rpc::encode_notification(
        "notifications/subscriptions/acknowledged",
        &ack,
    ));
    tokio::spawn(async move {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            tokio::select! {
                change = changes.recv() => {
                    let change = match change {
                        Ok(c) => c,
                        // Signals carry no data: a listener that fell behind
                        // misses nothing it cannot learn from the next one.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if !loose && !filter.wants(&change) {
                        continue;
                    }
                    let (method, mut params) = change.notification();
                    params["_meta"] = meta.clone();
                    if !sink.send(&rpc::encode_notification(method, &params)) {
                        return;
                    }
                }
                _ = keepalive.tick() => {
                    if !sink.send_raw(Bytes::from_static(b": keepalive\n\n")) {
                        return;
                    }
                }
                () = sink.closed() => return,
            }
        }
    });
    web::sse(body)
}

/// The `test_trigger_*` tools: signal a change, say so.
pub(crate) fn trigger(state: &State, change: Change, session: Option<&Session>) -> Value {
    let (method, _) = change.notification();
    state.bus.publish(change, session);
    super::mrtr::text_result(format!("signalled {method}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_is_what_was_asked_less_what_is_not_offered() {
        let f = Filter::parse(&json!({"notifications": {
            "toolsListChanged": true, "resourcesListChanged": true,
            "resourceSubscriptions": ["test://static-text"]}}))
        .unwrap();
        assert_eq!(
            f.honoured(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["test://static-text"]})
        );
        assert!(f.wants(&Change::Tools));
        assert!(!f.wants(&Change::Prompts));
        assert!(f.wants(&Change::Resource("test://static-text".into())));
        assert!(!f.wants(&Change::Resource("test://other".into())));
        for bad in [
            json!({}),
            json!({"notifications": []}),
            json!({"notifications": {"toolsListChanged": "yes"}}),
            json!({"notifications": {"resourceSubscriptions": [1]}}),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad}");
        }
    }
}
