//! Tool discovery: the control plane is an MCP client of each upstream. It
//! initializes a session, pages through `tools/list`, closes the session,
//! and replaces the upstream's catalog when it changed. Runs on demand
//! (DiscoverTools, and after an upstream is created) and periodically.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use stoa_proto::pb::{self, Kind, resource::Resource as R};
use tonic::Status;

use crate::{
    admin::status,
    store::{Actor, Op, Store},
};

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

#[derive(Debug, Clone)]
pub struct DiscoverSettings {
    /// Bound on each request to the upstream.
    pub timeout: Duration,
    /// Largest answer read from the upstream.
    pub max_response_bytes: usize,
    /// Most `tools/list` pages followed.
    pub max_pages: usize,
    /// How often every upstream's catalog is refreshed; zero turns it off.
    pub refresh_interval: Duration,
}

impl Default for DiscoverSettings {
    fn default() -> Self {
        DiscoverSettings {
            timeout: Duration::from_secs(10),
            max_response_bytes: 8 << 20,
            max_pages: 100,
            refresh_interval: Duration::from_secs(300),
        }
    }
}

pub struct Discoverer {
    store: Arc<Store>,
    client: HttpsClient,
    settings: DiscoverSettings,
}

impl Discoverer {
    pub fn new(store: Arc<Store>, settings: DiscoverSettings) -> Arc<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Arc::new(Discoverer {
            store,
            client: Client::builder(TokioExecutor::new()).build(https),
            settings,
        })
    }

    /// Lists the upstream's tools now and stores them if they changed.
    pub async fn refresh(
        &self,
        actor: &Actor,
        upstream: &str,
    ) -> Result<(Vec<pb::Tool>, u64), Status> {
        let (r, _) = self
            .store
            .get(Kind::Upstream, upstream)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("upstream {upstream:?} not found")))?;
        let Some(R::Upstream(up)) = r.resource else {
            return Err(Status::internal("stored upstream malformed"));
        };
        let tools = self
            .list_tools(&up)
            .await
            .map_err(|e| Status::unavailable(format!("upstream {upstream:?}: {e}")))?;
        let (known, revision) = self
            .store
            .list(Kind::Tool, None, Some(upstream))
            .await
            .map_err(status)?;
        let known: Vec<pb::Tool> = known
            .into_iter()
            .filter_map(|r| match r.resource {
                Some(R::Tool(t)) => Some(t),
                _ => None,
            })
            .collect();
        let mut sorted = tools.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|a, b| a.name == b.name);
        if sorted == known {
            return Ok((tools, revision));
        }
        let (revision, _) = self
            .store
            .apply(
                actor,
                "discover",
                vec![Op::ReplaceTools {
                    upstream: upstream.to_owned(),
                    tools: sorted,
                }],
            )
            .await
            .map_err(status)?;
        Ok((tools, revision))
    }

    pub fn refresh_soon(self: &Arc<Self>, upstream: String) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.refresh(&Actor::system(), &upstream).await {
                tracing::warn!(upstream, "tool discovery failed: {}", e.message());
            }
        });
    }

    /// Refreshes every upstream's catalog, forever.
    pub async fn run_periodically(self: Arc<Self>) {
        if self.settings.refresh_interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.settings.refresh_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Ok((ups, _)) = self.store.list(Kind::Upstream, None, None).await else {
                continue;
            };
            for u in ups {
                if let Err(e) = self.refresh(&Actor::system(), &u.name()).await {
                    tracing::warn!(upstream = %u.name(), "tool discovery failed: {}", e.message());
                }
            }
        }
    }

    async fn list_tools(&self, up: &pb::Upstream) -> Result<Vec<pb::Tool>, String> {
        let mut base = HeaderMap::new();
        for (k, v) in &up.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let mut value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            value.set_sensitive(true);
            base.insert(name, value);
        }
        let init = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "stoa-control", "version": env!("CARGO_PKG_VERSION")}
            }
        });
        let (answer, headers) = self.post(&up.url, &base, &init).await?;
        let result = answer.get("result").ok_or_else(|| error_of(&answer))?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or("2025-06-18")
            .to_owned();
        base.insert(
            "mcp-protocol-version",
            HeaderValue::from_str(&version).map_err(|e| e.to_string())?,
        );
        let session = headers.get("mcp-session-id").cloned();
        if let Some(s) = &session {
            base.insert("mcp-session-id", s.clone());
        }
        let notify = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.send(&up.url, &base, Method::POST, Some(&notify))
            .await?;

        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0..self.settings.max_pages {
            let mut params = json!({});
            if let Some(c) = &cursor {
                params["cursor"] = json!(c);
            }
            let req =
                json!({"jsonrpc": "2.0", "id": 2 + page, "method": "tools/list", "params": params});
            let (answer, _) = self.post(&up.url, &base, &req).await?;
            let result = answer.get("result").ok_or_else(|| error_of(&answer))?;
            for t in result
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let text = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                tools.push(pb::Tool {
                    upstream: up.name.clone(),
                    name: name.to_owned(),
                    title: text("title"),
                    description: text("description"),
                    input_schema_json: t
                        .get("inputSchema")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                });
            }
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        if session.is_some() {
            // Closing is a courtesy; an upstream that refuses DELETE is fine.
            let _ = self.send(&up.url, &base, Method::DELETE, None).await;
        }
        Ok(tools)
    }

    /// Sends a request and returns the JSON-RPC answer, whether the upstream
    /// replied with JSON or with an SSE stream.
    async fn post(
        &self,
        url: &str,
        base: &HeaderMap,
        body: &Value,
    ) -> Result<(Value, HeaderMap), String> {
        let (headers, bytes) = self.send(url, base, Method::POST, Some(body)).await?;
        let sse = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let id = body.get("id");
        let answer = if sse {
            let text = String::from_utf8_lossy(&bytes);
            text.split("\n\n")
                .filter_map(|event| {
                    let data: Vec<&str> = event
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                        .collect();
                    serde_json::from_str::<Value>(&data.join("\n")).ok()
                })
                .find(|v| v.get("id") == id)
                .ok_or("the SSE answer held no response to the request")?
        } else {
            serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?
        };
        Ok((answer, headers))
    }

    async fn send(
        &self,
        url: &str,
        base: &HeaderMap,
        method: Method,
        body: Option<&Value>,
    ) -> Result<(HeaderMap, Bytes), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json, text/event-stream");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let mut req = req
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        req.headers_mut().extend(base.clone());
        let work = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
            let (parts, body) = resp.into_parts();
            let bytes = Limited::new(body, self.settings.max_response_bytes)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            if !parts.status.is_success() {
                return Err(format!(
                    "HTTP {}: {}",
                    parts.status,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ));
            }
            Ok((parts.headers, bytes))
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .map_err(|_| format!("no answer within {:?}", self.settings.timeout))?
    }
}

fn error_of(answer: &Value) -> String {
    match answer.get("error") {
        Some(e) => format!("JSON-RPC error {e}"),
        None => "no result in the answer".into(),
    }
}
