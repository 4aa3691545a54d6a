//! A raw HTTP client for tests that need to see exactly what goes over the
//! wire (statuses, headers, framing), over h1, h2c and TLS (h1/h2).

use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct Http {
    client: Client<Connector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: String,
}

impl Reply {
    /// The JSON-RPC message of the reply: the body, or the last SSE
    /// `data:` that holds a response.
    pub fn json(&self) -> Value {
        if let Ok(v) = serde_json::from_str(&self.body) {
            return v;
        }
        self.sse_messages()
            .into_iter()
            .rev()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no JSON-RPC response in: {}", self.body))
    }

    pub fn sse_messages(&self) -> Vec<Value> {
        self.body
            .split("\n\n")
            .filter_map(|ev| {
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                (!data.is_empty())
                    .then(|| serde_json::from_str(&data.join("\n")).ok())
                    .flatten()
            })
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Http {
    fn build(connector: Connector, h2_only: bool) -> Http {
        let mut b = Client::builder(TokioExecutor::new());
        b.http2_only(h2_only);
        Http {
            client: b.build(connector),
        }
    }

    pub fn h1() -> Http {
        Self::build(plain_connector(), false)
    }

    /// HTTP/2 over cleartext with prior knowledge.
    pub fn h2c() -> Http {
        Self::build(plain_connector(), true)
    }

    /// TLS trusting `ca`; ALPN offers h2 only when `h2`.
    pub fn tls(ca: &Path, h2: bool) -> Http {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(c.expect("CA cert")).expect("add CA");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_only();
        let connector = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        Self::build(connector, h2)
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let resp = self.open(method, url, headers, body).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Like `send`, but a connection or TLS failure is a value, not a panic.
    pub async fn try_send(&self, method: Method, url: &str) -> Result<StatusCode, String> {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        match self.client.request(req).await {
            Ok(resp) => Ok(resp.status()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Sends and returns the response without reading the body (streams).
    pub async fn open(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> http::Response<Incoming> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .expect("request");
        self.client.request(req).await.expect("request sent")
    }
}

fn plain_connector() -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("provider")
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http)
}

/// A minimal MCP client session over `Http`, for wire-level assertions.
pub struct Session<'a> {
    pub http: &'a Http,
    pub url: String,
    pub auth: String,
    pub id: Option<String>,
    pub version: String,
    next: u64,
}

pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

impl<'a> Session<'a> {
    pub fn new(http: &'a Http, url: &str, auth: &str) -> Self {
        Session {
            http,
            url: url.into(),
            auth: auth.into(),
            id: None,
            version: "2025-11-25".into(),
            next: 1,
        }
    }

    pub fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![
            ("authorization", self.auth.as_str()),
            ("content-type", "application/json"),
            ("accept", ACCEPT_BOTH),
            ("mcp-protocol-version", self.version.as_str()),
        ];
        if let Some(id) = &self.id {
            h.push(("mcp-session-id", id.as_str()));
        }
        h
    }

    pub async fn initialize(&mut self) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": self.version, "capabilities": {"sampling": {}, "elicitation": {}},
            "clientInfo": {"name": "stoa-it", "version": "0"}}});
        let headers: Vec<(&str, &str)> = vec![
            ("authorization", self.auth.as_str()),
            ("content-type", "application/json"),
            ("accept", ACCEPT_BOTH),
        ];
        let r = self
            .http
            .send(Method::POST, &self.url, &headers, Some(&body.to_string()))
            .await;
        assert_eq!(r.status, StatusCode::OK, "initialize: {}", r.body);
        self.id = r.header("mcp-session-id").map(str::to_owned);
        let v = r.json();
        let n = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let r2 = self
            .http
            .send(
                Method::POST,
                &self.url,
                &self.headers(),
                Some(&n.to_string()),
            )
            .await;
        assert_eq!(r2.status, StatusCode::ACCEPTED, "initialized: {}", r2.body);
        v
    }

    pub async fn request(&mut self, method: &str, params: Value) -> Reply {
        let id = self.next;
        self.next += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.http
            .send(
                Method::POST,
                &self.url,
                &self.headers(),
                Some(&body.to_string()),
            )
            .await
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let r = self.request(method, params).await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
        r.json()
    }
}

/// The `_meta` a 2026-07-28 client sends on every request (protocol
/// version, no client capabilities).
pub fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

/// POSTs one 2026-07-28 request with its mirrored `Mcp-Method` (and
/// `Mcp-Name`, when given) headers; `params` go as given (`stateless_meta`
/// is the caller's to add). `auth`: the `Authorization` value, if any.
pub async fn post_stateless(
    http: &Http,
    url: &str,
    auth: Option<&str>,
    method: &str,
    name: Option<&str>,
    params: Value,
) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", ACCEPT_BOTH),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", method),
    ];
    if let Some(n) = name {
        headers.push(("mcp-name", n));
    }
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    http.send(Method::POST, url, &headers, Some(&body.to_string()))
        .await
}

/// A 2026-07-28 `tools/call` of `name` (with `_meta` and the mirrored
/// headers) that must answer 200: its JSON.
pub async fn call_stateless(
    http: &Http,
    url: &str,
    auth: &str,
    name: &str,
    arguments: Value,
) -> Value {
    let params = json!({"name": name, "arguments": arguments, "_meta": stateless_meta()});
    let r = post_stateless(http, url, Some(auth), "tools/call", Some(name), params).await;
    assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
    r.json()
}

/// Opens a 2026-07-28 `subscriptions/listen` stream with request id `id`.
pub async fn listen(http: &Http, url: &str, auth: &str, id: Value, filter: Value) -> SseReader {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "subscriptions/listen",
                      "params": {"_meta": stateless_meta(), "notifications": filter}});
    let resp = http
        .open(
            Method::POST,
            url,
            &[
                ("content-type", "application/json"),
                ("accept", ACCEPT_BOTH),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "subscriptions/listen"),
                ("authorization", auth),
            ],
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    SseReader::new(resp)
}

/// Reads the JSON messages of an SSE response as they arrive.
pub struct SseReader {
    resp: http::Response<Incoming>,
    buf: String,
}

impl SseReader {
    pub fn new(resp: http::Response<Incoming>) -> SseReader {
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next message, or `None` once the stream has ended cleanly.
    /// Panics if none comes within 20 s, or if the stream breaks.
    pub async fn next(&mut self) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let ev: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = ev
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if let Ok(v) = serde_json::from_str(&data.join("\n")) {
                    return Some(v);
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.resp.body_mut().frame())
                .await
                .expect("a message in time");
            match frame {
                None => return None,
                Some(Err(e)) => panic!("the stream broke: {e}"),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }

    /// The next message that matches `want`, skipping others.
    pub async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await.expect("the stream is open");
            if want(&v) {
                return v;
            }
        }
    }
}

/// A QUIC connection (ALPN h3) to a gateway's TLS port, trusting its
/// development CA; and the port.
pub async fn quic_connect(
    gw: &crate::harness::Gateway,
) -> (quinn::Endpoint, quinn::Connection, u16) {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let port: u16 = gw.tls_url().rsplit(':').next().unwrap().parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(gw.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let config = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, ([127, 0, 0, 1], port).into(), "localhost")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn, port)
}

/// An HTTP/3 client (quinn and h3) on one QUIC connection to a gateway's
/// TLS port, trusting its development CA.
pub struct H3 {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    /// `https://localhost:<port>`.
    pub base: String,
}

impl H3 {
    pub async fn connect(gw: &crate::harness::Gateway) -> H3 {
        let (endpoint, conn, port) = quic_connect(gw).await;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        H3 {
            endpoint,
            conn,
            send,
            base: format!("https://localhost:{port}"),
        }
    }

    /// Another handle on the same connection, for a concurrent request.
    pub fn clone_sender(&self) -> H3Sender {
        H3Sender(self.send.clone())
    }

    pub async fn post(&mut self, url: &str, headers: &[(String, String)], body: &Value) -> Reply {
        h3_post(&mut self.send, url, headers, body).await
    }
}

pub struct H3Sender(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>);

impl H3Sender {
    pub async fn post(&mut self, url: &str, headers: &[(String, String)], body: &Value) -> Reply {
        h3_post(&mut self.0, url, headers, body).await
    }
}

async fn h3_post(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    url: &str,
    headers: &[(String, String)],
    body: &Value,
) -> Reply {
    use bytes::Buf;
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut stream = send.send_request(req.body(()).unwrap()).await.unwrap();
    stream
        .send_data(Bytes::from(body.to_string()))
        .await
        .unwrap();
    stream.finish().await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    let mut out = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Reply {
        status: resp.status(),
        headers: resp.headers().clone(),
        version: Version::HTTP_3,
        body: String::from_utf8(out).unwrap(),
    }
}
