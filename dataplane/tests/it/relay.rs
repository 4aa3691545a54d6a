//! `/mcp/<upstream>`: the official SDK clients through the gateway to one upstream.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    clients::{self, text_of, tool_names},
    harness::{Gateway, GatewaySpec, Key, Reference},
    http::{Http, Session, post_stateless, stateless_meta},
};

#[tokio::test(flavor = "multi_thread")]
async fn typescript_and_python_sdks_list_and_call_through_one_upstream() {
    let reference = Reference::start(None);
    let (spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp/reference", gw.url());

    let listed = clients::ts(&url, &key.bearer(), "list", None).await;
    let tools = tool_names(&listed);
    assert!(
        tools.contains(&"echo".to_string()) && tools.contains(&"test_simple_text".to_string()),
        "{tools:?}"
    );
    let called = clients::ts(
        &url,
        &key.bearer(),
        "call",
        Some(("echo", json!({"message": "hello through stoa"}))),
    )
    .await;
    assert_eq!(text_of(&called["result"]), "hello through stoa");

    let listed = clients::py(&url, &key.bearer(), "list", None).await;
    assert!(tool_names(&listed).contains(&"add".to_string()));
    let called = clients::py(
        &url,
        &key.bearer(),
        "call",
        Some(("add", json!({"a": 2, "b": 40}))),
    )
    .await;
    assert_eq!(text_of(&called["result"]), "42");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_sees_and_calls_only_granted_tools() {
    let reference = Reference::start(None);
    let key = Key::new();
    let spec = GatewaySpec {
        upstreams: vec![("reference".into(), reference.url.clone())],
        keys: vec![(key.clone(), vec![("reference".into(), vec!["echo".into()])])],
        tls: false,
        extra: String::new(),
        session_key: None,
        workers: None,
    };
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp/reference", gw.url());

    let listed = clients::ts(&url, &key.bearer(), "list", None).await;
    assert_eq!(tool_names(&listed), vec!["echo".to_string()]);

    let http = Http::h1();
    let mut s = Session::new(&http, &url, &key.bearer());
    s.initialize().await;
    let ok = s
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "yes"}}),
        )
        .await;
    assert_eq!(text_of(&ok["result"]), "yes");
    let refused = s
        .call(
            "tools/call",
            json!({"name": "add", "arguments": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(refused["error"]["code"], -32003, "{refused}");
    assert_eq!(refused["error"]["data"]["reason"], "not_granted");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("add")
    );

    // An upstream the key has no subscription to does not exist for it.
    let r = http
        .send(
            Method::POST,
            &format!("{}/mcp/other", gw.url()),
            &s.headers(),
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// Accepts one HTTP request, hands back its head, answers with `answer`.
async fn capture_upstream(
    answer: &'static str,
) -> (String, tokio::sync::oneshot::Receiver<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", l.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_stay_at_the_gateway_and_upstream_credentials_are_injected() {
    let (up_url, head) = capture_upstream(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#).await;
    let key = Key::new();
    let dir = crate::harness::temp_dir("creds");
    let config = dir.join("gateway.yaml");
    let yaml = format!(
        r#"listeners: {{plain: 127.0.0.1:0}}
tenants: [{{name: acme}}]
upstreams:
  - name: captured
    url: "{up_url}"
    headers: {{Authorization: "Bearer ${{STOA_IT_UPSTREAM_TOKEN}}", X-Tenant: acme}}
subscriptions: [{{name: s, tenant: acme, upstream: captured}}]
api_keys: [{{name: k, tenant: acme, prefix: {}, hash: "{}", subscriptions: [s]}}]
"#,
        key.prefix, key.hash
    );
    std::fs::write(&config, yaml).unwrap();
    let gw = Gateway::start_with_env(
        dir,
        config,
        &[("STOA_IT_UPSTREAM_TOKEN", "upstream-secret")],
    )
    .await;
    let http = Http::h1();
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}).to_string();
    let r = http
        .send(
            Method::POST,
            &format!("{}/mcp/captured", gw.url()),
            &[
                ("x-api-key", &key.secret),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("cookie", "c=1"),
            ],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let head = head.await.unwrap().to_ascii_lowercase();
    assert!(
        head.contains("authorization: bearer upstream-secret"),
        "{head}"
    );
    assert!(head.contains("x-tenant: acme"), "{head}");
    assert!(
        !head.contains(&key.secret.to_ascii_lowercase()),
        "client key leaked upstream: {head}"
    );
    assert!(
        !head.contains("x-api-key") && !head.contains("cookie"),
        "{head}"
    );
    assert!(!gw.log().contains("upstream-secret"), "secret in logs");
}

/// 2026-07-28 cache hints: what the gateway relays is served under a key's
/// grants, so a result the upstream marks `cacheScope: "public"` (any cache
/// may serve it to anyone) reaches the client as "private".
#[tokio::test(flavor = "multi_thread")]
async fn cache_hints_stay_private_behind_the_gateway() {
    let reference = Reference::start(None);
    let (spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let auth = key.bearer();
    let meta = stateless_meta();
    let uri = "test://static-text";
    for (method, name, params) in [
        ("tools/list", None, json!({"_meta": meta})),
        (
            "resources/read",
            Some(uri),
            json!({"uri": uri, "_meta": meta}),
        ),
    ] {
        let scope = |url: String, with_key: bool| {
            let (http, auth, params) = (&http, &auth, params.clone());
            async move {
                let auth = with_key.then_some(auth.as_str());
                let r = post_stateless(http, &url, auth, method, name, params).await;
                let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
                assert_eq!(r.status, StatusCode::OK, "{method}: {v}");
                v["result"]["cacheScope"].clone()
            }
        };
        assert_eq!(
            scope(reference.url.clone(), false).await,
            "public",
            "{method} direct"
        );
        assert_eq!(
            scope(format!("{}/mcp/reference", gw.url()), true).await,
            "private",
            "{method} through the gateway"
        );
    }
}
