//! The reference upstream over real sockets: both wires, end to end.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use stoa_loadtest::reference::{Options, serve};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn start(opts: Options) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener, opts));
    url
}

async fn post(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, http::HeaderMap, Value) {
    let mut req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = client.request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status.as_u16(), parts.headers, value)
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn stateful_session_lifecycle() {
    let url = start(Options {
        force_version: Some("2025-06-18".into()),
        ..Default::default()
    })
    .await;
    let c = client();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let (status, headers, body) = post(&c, &url, &[], init).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["result"]["protocolVersion"], "2025-06-18",
        "force_version wins"
    );
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned();
    let h = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];

    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(post(&c, &url, &h, note).await.0, 202);

    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}});
    let (status, _, body) = post(&c, &url, &h, call.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["content"][0]["text"], "hi");

    let (status, _, _) = post(&c, &url, &[], call.clone()).await;
    assert_eq!(status, 400, "missing session");

    let del = http::Request::delete(&url)
        .header("mcp-session-id", &sid)
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(c.request(del).await.expect("response").status(), 200);
    assert_eq!(post(&c, &url, &h, call).await.0, 404, "ended session");
}

#[tokio::test]
async fn stateless_wire() {
    let url = start(Options::default()).await;
    let c = client();
    let meta = json!({"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}});
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "add"),
    ];
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3},"_meta":meta}});
    let (status, _, body) = post(&c, &url, &h, call.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["content"][0]["text"], "5");
    assert_eq!(body["result"]["resultType"], "complete");

    let wrong = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    let (status, _, body) = post(&c, &url, &wrong, call).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32020))
    );

    let removed = json!({"jsonrpc":"2.0","id":8,"method":"ping","params":{"_meta":meta}});
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "ping"),
    ];
    let (status, _, body) = post(&c, &url, &h, removed).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64(), body["id"].as_i64()),
        (404, Some(-32601), Some(8))
    );

    let needs_sampling = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"test_missing_capability","arguments":{},"_meta":meta}});
    let h = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "test_missing_capability"),
    ];
    let (status, _, body) = post(&c, &url, &h, needs_sampling).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32021))
    );
    assert!(body["error"]["data"]["requiredCapabilities"]["sampling"].is_object());
}

#[tokio::test]
async fn foreign_origin_is_forbidden() {
    let url = start(Options::default()).await;
    let (status, _, _) = post(
        &client(),
        &url,
        &[("origin", "http://evil.example.com")],
        json!({}),
    )
    .await;
    assert_eq!(status, 403);
}
