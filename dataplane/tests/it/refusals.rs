//! Bad input and bad upstreams: each gets a clear status and JSON-RPC error
//! naming the reason, and the gateway keeps serving.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    harness::{Gateway, GatewaySpec, Reference},
    http::{ACCEPT_BOTH, Http, Session},
};

const TIGHT: &str = "limits: {max_body_bytes: 2048, header_read_timeout: 300ms, upstream_response_timeout: 500ms, request_timeout: 2s, max_sse_event_bytes: 1024, max_header_bytes: 8192, idle_timeout: 400ms}\n";

fn reason(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"]["data"]["reason"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_reasons() {
    let reference = Reference::start(None);
    let (mut spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    spec.extra = TIGHT.into();
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp/reference", gw.url());
    let http = Http::h1();
    let auth = key.bearer();
    let good = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", ACCEPT_BOTH),
    ];
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();

    // Authentication.
    let r = http.send(Method::POST, &url, &good[1..], Some(&ping)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(reason(&r.body), "missing_key");
    let wrong = format!("{}x", key.bearer());
    let r = http
        .send(
            Method::POST,
            &url,
            &[("authorization", &wrong), good[1], good[2]],
            Some(&ping),
        )
        .await;
    assert_eq!(
        (r.status, reason(&r.body)),
        (StatusCode::UNAUTHORIZED, json!("bad_key"))
    );

    // (case, headers, body, status, reason, JSON-RPC code)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        String,
        StatusCode,
        &'a str,
        i64,
    );
    let cases: Vec<Case> = vec![
        (
            "batch",
            good.to_vec(),
            format!("[{ping}]"),
            StatusCode::BAD_REQUEST,
            "batch_unsupported",
            -32600,
        ),
        (
            "malformed",
            good.to_vec(),
            "{\"jsonrpc\":".into(),
            StatusCode::BAD_REQUEST,
            "parse_error",
            -32700,
        ),
        (
            "not json-rpc",
            good.to_vec(),
            "{\"hello\":1}".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            -32600,
        ),
        (
            "content type",
            vec![good[0], ("content-type", "text/plain"), good[2]],
            ping.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            -32600,
        ),
        (
            "too large",
            good.to_vec(),
            format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"pad\":\"{}\"}}",
                "x".repeat(4096)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            -32013,
        ),
        (
            "origin",
            vec![
                good[0],
                good[1],
                good[2],
                ("origin", "https://evil.example"),
            ],
            ping.clone(),
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            -32003,
        ),
        (
            "version",
            vec![
                good[0],
                good[1],
                good[2],
                ("mcp-protocol-version", "1999-01-01"),
            ],
            ping.clone(),
            StatusCode::BAD_REQUEST,
            "protocol_version",
            -32022,
        ),
        (
            "mirror",
            vec![
                good[0],
                good[1],
                good[2],
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
            ],
            ping.clone(),
            StatusCode::BAD_REQUEST,
            "header_mismatch",
            -32020,
        ),
        (
            "session",
            vec![good[0], good[1], good[2], ("mcp-session-id", "forged")],
            ping.clone(),
            StatusCode::NOT_FOUND,
            "unknown_session",
            -32004,
        ),
    ];
    for (name, headers, body, status, why, code) in cases {
        let r = http.send(Method::POST, &url, &headers, Some(&body)).await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["data"]["reason"], why, "{name}: {}", r.body);
        assert_eq!(v["error"]["code"], code, "{name}");
    }
    let r = http.send(Method::PUT, &url, &good, Some(&ping)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // A request head beyond max_header_bytes.
    let huge = "x".repeat(16 * 1024);
    let r = http
        .send(
            Method::POST,
            &url,
            &[good[0], good[1], good[2], ("x-padding", &huge)],
            Some(&ping),
        )
        .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Still serving after all that.
    let mut s = Session::new(&http, &url, &auth);
    s.initialize().await;
    let ok = s
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "alive"}}),
        )
        .await;
    assert_eq!(ok["result"]["content"][0]["text"], "alive");
}

/// An upstream that misbehaves in one specific way.
async fn broken_upstream(kind: &'static str) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                match kind {
                    "hang" => tokio::time::sleep(Duration::from_secs(30)).await,
                    "reset" => drop(s),
                    "garbage" => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 5\r\n\r\n<html").await;
                    }
                    "stall-body" => {
                        // Promises 1000 bytes, sends 10, then stalls.
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"jsonrpc\"").await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    "te-and-length" => {
                        // Transfer-Encoding wins over Content-Length, which
                        // must not reach the client.
                        let body = r#"{"jsonrpc":"2.0","id":9,"result":{}}"#;
                        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    "one-shot" => {
                        // Answers, then closes the connection without
                        // saying so (no `connection: close`), after a pause.
                        let body = r#"{"jsonrpc":"2.0","id":9,"result":{"content":[]}}"#;
                        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    "huge-event" => {
                        let event = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(4096));
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        let chunk = format!("{:x}\r\n{event}\r\n0\r\n\r\n", event.len());
                        let _ = s.write_all(format!("{head}{chunk}").as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    _ => unreachable!(),
                }
            });
        }
    });
    url
}

/// An upstream that answers the first request on each connection and, on
/// the same connection, reads the second and closes without a word, as an
/// upstream might that crashed while acting on it. Counts what it read.
async fn answers_once_per_connection(
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use std::sync::atomic::Ordering;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                // Requests are small: one read is one request.
                if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"jsonrpc":"2.0","id":9,"result":{"tools":[]}}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    url
}

/// A gateway with one worker in front of `answers_once_per_connection`:
/// every request meets the same pool of upstream connections.
struct BehindOneWorker {
    gw: Gateway,
    key: crate::harness::Key,
    http: Http,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BehindOneWorker {
    async fn start(extra: &str) -> Self {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let up = answers_once_per_connection(seen.clone()).await;
        let (mut spec, key) = GatewaySpec::open(&[("once", &up)]);
        spec.workers = Some(1);
        spec.extra = extra.into();
        let gw = Gateway::start(&spec).await;
        BehindOneWorker {
            gw,
            key,
            http: Http::h1(),
            seen,
        }
    }

    /// POSTs a JSON-RPC request (id 9) with `method`.
    async fn send(&self, method: &str) -> crate::http::Reply {
        let auth = self.key.bearer();
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("accept", ACCEPT_BOTH),
        ];
        let body = json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": {"name": "x", "arguments": {}}}).to_string();
        let url = format!("{}/mcp/once", self.gw.url());
        self.http
            .send(Method::POST, &url, &headers, Some(&body))
            .await
    }

    /// Requests the upstream has read.
    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_is_never_sent_twice() {
    let t = BehindOneWorker::start("").await;
    let r = t.send("tools/call").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The next call goes on the pooled connection; the upstream reads it and
    // closes. It may have acted: the call fails, retryable, and is not sent
    // again on a new connection.
    let r = t.send("tools/call").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], 9);
    assert_eq!(v["error"]["data"]["reason"], "upstream_unavailable", "{v}");
    assert_eq!(v["error"]["data"]["retryable"], true, "{v}");
    assert_eq!(t.seen(), 2, "the call reached the upstream once");

    // A read is safe to repeat: the same silence sends it again, and it is answered.
    let r = t.send("tools/list").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = t.send("tools/list").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["result"], json!({"tools": []}));
    assert_eq!(
        t.seen(),
        5,
        "the second list was read, dropped, and sent again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_upstream_connections_expire_before_the_upstream_closes_them() {
    let t = BehindOneWorker::start("limits: {upstream_idle_timeout: 100ms}\n").await;
    for i in 0..3 {
        // Past upstream_idle_timeout, the pooled connection (which this
        // upstream would not answer again) is not reused.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = t.send("tools/call").await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.body);
    }
    assert_eq!(t.seen(), 3, "one connection per call");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_upstreams_get_named_errors() {
    let mut ups = Vec::new();
    for kind in [
        "hang",
        "reset",
        "garbage",
        "huge-event",
        "one-shot",
        "stall-body",
        "te-and-length",
    ] {
        ups.push((kind, broken_upstream(kind).await));
    }
    let named: Vec<(&str, &str)> = ups.iter().map(|(k, u)| (*k, u.as_str())).collect();
    let (mut spec, key) = GatewaySpec::open(&named);
    spec.extra = TIGHT.into();
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let auth = key.bearer();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", ACCEPT_BOTH),
    ];
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x", "arguments": {}}}).to_string();
    let call_on = |kind: &'static str| {
        let (http, url, headers, call) =
            (&http, format!("{}/mcp/{kind}", gw.url()), &headers, &call);
        async move { http.send(Method::POST, &url, headers, Some(call)).await }
    };
    let expect = [
        ("hang", StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        ("reset", StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        ("garbage", StatusCode::BAD_GATEWAY, "upstream_bad_response"),
        (
            "stall-body",
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
        ),
    ];
    for (kind, status, why) in expect {
        let r = call_on(kind).await;
        assert_eq!(r.status, status, "{kind}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["id"], 9, "{kind}: the error answers the request");
        assert_eq!(v["error"]["data"]["reason"], why, "{kind}: {}", r.body);
        assert_eq!(
            v["error"]["data"]["retryable"],
            why != "upstream_bad_response",
            "{kind}"
        );
    }
    // A chunked answer that also claims a Content-Length arrives whole.
    let r = call_on("te-and-length").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["result"], json!({}), "{}", r.body);
    // An upstream that drops each connection after one answer: the pooled
    // connection it closed is not reused, and no call fails for it.
    for i in 0..5 {
        let r = call_on("one-shot").await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.body);
        assert_eq!(r.json()["id"], 9);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // The next call comes before the close is noticed: the upstream never
    // read it (it resets the connection with the request unread), but a
    // tool call that met silence on a reused connection is not sent twice
    // (see `a_tool_call_is_never_sent_twice`): it fails, retryable, or is
    // answered on a new connection if the close was seen in time.
    for i in 0..5 {
        let r = call_on("one-shot").await;
        assert!(
            r.status == StatusCode::OK
                || (r.status == StatusCode::BAD_GATEWAY
                    && r.json()["error"]["data"]["retryable"] == true),
            "quick call {i}: {} {}",
            r.status,
            r.body
        );
    }
    // An SSE event beyond the limit: the stream ends with an error for the request.
    let r = call_on("huge-event").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["id"], 9);
    assert_eq!(
        v["error"]["data"]["reason"], "upstream_bad_response",
        "{}",
        r.body
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1024"),
        "{v}"
    );
    assert!(
        !r.body.contains("xxxxxxxx"),
        "the oversized event never reaches the client"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_that_answer_no_ping_are_closed() {
    let reference = Reference::start(None);
    let (mut spec, _key) = GatewaySpec::open(&[("reference", &reference.url)]);
    // Idle connections are closed much later: only the ping bound can end this one.
    spec.extra = "limits: {ping_interval: 200ms, send_timeout: 300ms, idle_timeout: 60s}\n".into();
    let gw = Gateway::start(&spec).await;
    let addr = gw.bound["plain"].as_str().unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // h2c by prior knowledge: the preface and an empty SETTINGS frame, and
    // then nothing, as from a client that has stopped reading.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(
        r.is_ok(),
        "the gateway kept an HTTP/2 client that answers no ping"
    );
    // The frames it sent: SETTINGS, a PING that went unanswered, GOAWAY.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        types.push(got[at + 3]);
        at += 9 + len;
    }
    assert!(types.contains(&0x6), "no PING among frames {types:?}");
    assert_eq!(types.last(), Some(&0x7), "no GOAWAY at the end: {types:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off() {
    let reference = Reference::start(None);
    let (mut spec, _key) = GatewaySpec::open(&[("reference", &reference.url)]);
    // Idle connections are closed much later: only the header-read timeout
    // can end these.
    spec.extra = "limits: {header_read_timeout: 300ms, idle_timeout: 60s}\n".into();
    let gw = Gateway::start(&spec).await;
    let addr = gw.bound["plain"].as_str().unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /mcp/reference HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // The gateway gives up on the head (header_read_timeout 300ms) and
    // closes, though nothing more arrives to wake the connection.
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(r.is_ok(), "the gateway kept a slowloris connection open");

    // A head that keeps trickling in (so the connection is never idle) is
    // cut off all the same, by the header-read timeout alone.
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /mcp/reference HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let mut sent = 0;
        while wr.write_all(b"a").await.is_ok() {
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });
    let r = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a trickled head was not cut off: {r:?}"
    );
    let sent = tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .expect("the writer stops once the gateway closes")
        .unwrap();
    assert!(sent > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let reference = Reference::start(None);
    let (mut spec, _key) = GatewaySpec::open(&[("reference", &reference.url)]);
    spec.extra = TIGHT.into();
    let gw = Gateway::start(&spec).await;
    let addr = gw.bound["plain"].as_str().unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then closed once idle for idle_timeout (400ms).
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection still open: {r:?}"
    );
}
