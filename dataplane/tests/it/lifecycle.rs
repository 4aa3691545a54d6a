//! Replicas, reloads, shutdown and the operator endpoints.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use crate::{
    clients::text_of,
    harness::{Gateway, GatewaySpec, Key, Reference, eventually, everything},
    http::{Http, Session, SseReader},
};

const SHARED_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64

#[tokio::test(flavor = "multi_thread")]
async fn any_replica_serves_any_request_of_a_session() {
    let reference = Reference::start(None);
    let (_ev, ev_url) = everything().await;
    let (mut spec, key) =
        GatewaySpec::open(&[("reference", &reference.url), ("everything", &ev_url)]);
    spec.session_key = Some(SHARED_KEY.into());
    let a = Gateway::start(&spec).await;
    let b = Gateway::start(&spec).await;
    let http = Http::h1();

    for path in ["/mcp/reference", "/mcp"] {
        let mut on_a = Session::new(&http, &format!("{}{path}", a.url()), &key.bearer());
        on_a.initialize().await;
        let mut on_b = Session::new(&http, &format!("{}{path}", b.url()), &key.bearer());
        on_b.id = on_a.id.clone();
        let tool = if path == "/mcp" {
            "reference__echo"
        } else {
            "echo"
        };
        for i in 0..3 {
            let s = if i % 2 == 0 { &mut on_b } else { &mut on_a };
            let r = s
                .call(
                    "tools/call",
                    json!({"name": tool, "arguments": {"message": format!("turn {i}")}}),
                )
                .await;
            assert_eq!(text_of(&r["result"]), format!("turn {i}"), "{path}: {r}");
        }
        // The session belongs to its key: another key cannot use it.
        let other = Key::new();
        let mut thief = Session::new(&http, &format!("{}{path}", b.url()), &other.bearer());
        thief.id = on_a.id.clone();
        let r = thief.request("tools/list", json!({})).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "unknown key first");
    }

    // A server-to-client request raised on one replica is answered through the other.
    let mut on_a = Session::new(&http, &format!("{}/mcp/everything", a.url()), &key.bearer());
    on_a.initialize().await;
    let call = json!({"jsonrpc": "2.0", "id": 99, "method": "tools/call",
        "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "x"}}});
    let mut stream = SseReader::new(
        http.open(
            Method::POST,
            &on_a.url,
            &on_a.headers(),
            Some(&call.to_string()),
        )
        .await,
    );
    let sampling_req = stream
        .until(|v| v.get("method").is_some() && v.get("id").is_some())
        .await;
    assert_eq!(sampling_req["method"], "sampling/createMessage");
    let mut on_b = Session::new(&http, &format!("{}/mcp/everything", b.url()), &key.bearer());
    on_b.id = on_a.id.clone();
    let answer = json!({"jsonrpc": "2.0", "id": sampling_req["id"], "result": {
        "role": "assistant", "content": {"type": "text", "text": "answered via b"}, "model": "m", "stopReason": "endTurn"}});
    let r = http
        .send(
            Method::POST,
            &on_b.url,
            &on_b.headers(),
            Some(&answer.to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let done = stream.until(|v| v["id"] == 99).await;
    assert!(done.to_string().contains("answered via b"), "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reloads_atomically_and_bad_config_keeps_the_last_good_one() {
    let reference = Reference::start(None);
    let (mut spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let url = format!("{}/mcp/reference", gw.url());
    let newcomer = Key::new();
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "it", "version": "0"}}})
    .to_string();
    let status = |k: &Key| {
        let auth = k.bearer();
        let url = url.clone();
        let ping = ping.clone();
        let http = &http;
        async move {
            http.send(
                Method::POST,
                &url,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                    ("accept", "application/json, text/event-stream"),
                ],
                Some(&ping),
            )
            .await
            .status
        }
    };
    assert_eq!(status(&newcomer).await, StatusCode::UNAUTHORIZED);

    spec.keys.push((
        newcomer.clone(),
        vec![("reference".into(), vec!["*".into()])],
    ));
    std::fs::write(&gw.config, spec.yaml(&gw.dir)).unwrap();
    let log = gw.dir.join("gateway.log");
    eventually("the new key to work", Duration::from_secs(10), || async {
        let ok = status(&newcomer).await == StatusCode::OK;
        if !ok
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("config not reloaded")
        {
            panic!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        ok.then_some(())
    })
    .await;

    std::fs::write(&gw.config, "listeners: [this is not a config").unwrap();
    let metrics = eventually(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || async {
            let m = gw.metrics().await;
            m.contains("stoa_config_reloads_total{outcome=\"error\"}")
                .then_some(m)
        },
    )
    .await;
    assert!(
        metrics.contains("stoa_config_reloads_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        status(&key).await,
        StatusCode::OK,
        "last good config still serves"
    );
    assert_eq!(status(&newcomer).await, StatusCode::OK);

    // Revoked while the client's keep-alive connections (which have already
    // proved the key) stay open: the next request on them is refused.
    assert_eq!(status(&newcomer).await, StatusCode::OK);
    spec.keys.pop();
    std::fs::write(&gw.config, spec.yaml(&gw.dir)).unwrap();
    eventually(
        "the revoked key to be refused",
        Duration::from_secs(10),
        || async { (status(&newcomer).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    assert_eq!(status(&key).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_and_graceful_drain() {
    let (_ev, ev_url) = everything().await;
    let (spec, key) = GatewaySpec::open(&[("everything", &ev_url)]);
    let mut gw = Gateway::start(&spec).await;
    let http = Http::h1();
    assert_eq!(
        http.send(Method::GET, &format!("{}/healthz", gw.url()), &[], None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        http.send(Method::GET, &format!("{}/readyz", gw.url()), &[], None)
            .await
            .status,
        StatusCode::OK
    );

    let mut s = Session::new(
        &http,
        &format!("{}/mcp/everything", gw.url()),
        &key.bearer(),
    );
    s.initialize().await;
    let echo = s
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "m"}}),
        )
        .await;
    assert!(text_of(&echo["result"]).contains('m'));
    let m = gw.metrics().await;
    assert!(m.contains(r#"stoa_requests_total{method="tools/call",route="upstream",status="200",upstream="everything"} 1"#), "{m}");
    assert!(
        m.contains(
            r#"stoa_tool_calls_total{outcome="relayed",tool="echo",upstream="everything"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains("stoa_request_duration_seconds_bucket"), "{m}");

    // A 2-second tool call is in flight when the gateway is told to stop: it completes.
    let long = json!({"jsonrpc": "2.0", "id": 50, "method": "tools/call",
        "params": {"name": "trigger-long-running-operation", "arguments": {"duration": 2, "steps": 2}, "_meta": {"progressToken": "p"}}});
    let headers: Vec<(String, String)> = s
        .headers()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let url = s.url.clone();
    let in_flight = tokio::spawn(async move {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Http::h1()
            .send(Method::POST, &url, &h, Some(&long.to_string()))
            .await
    });
    let m = eventually(
        "the call to be in flight",
        Duration::from_secs(10),
        || async {
            let m = gw.metrics().await;
            m.contains("stoa_active_streams{kind=\"post\"} 1")
                .then_some(m)
        },
    )
    .await;
    drop(m);
    gw.proc.signal("TERM");
    let done = in_flight.await.unwrap();
    assert_eq!(done.status, StatusCode::OK);
    let result = done.json();
    assert_eq!(result["id"], 50);
    assert!(text_of(&result["result"]).contains("completed"), "{result}");
    let status = gw.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log());
    assert!(gw.log().contains("drained"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn long_tool_calls_keep_their_stream_alive() {
    let (_ev, ev_url) = everything().await;
    let (mut spec, key) = GatewaySpec::open(&[("everything", &ev_url)]);
    // Timeouts meant for short exchanges are far below the call's length.
    spec.extra = "limits: {sse_keepalive_interval: 200ms, request_timeout: 500ms, upstream_response_timeout: 1s}\n".into();
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let mut s = Session::new(
        &http,
        &format!("{}/mcp/everything", gw.url()),
        &key.bearer(),
    );
    s.initialize().await;
    let r = s
        .request(
            "tools/call",
            json!({"name": "trigger-long-running-operation", "arguments": {"duration": 3, "steps": 2}, "_meta": {"progressToken": 1}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.body.contains(": keep-alive"),
        "quiet stretches carry keep-alives: {}",
        r.body
    );
    assert!(
        text_of(&r.json()["result"]).contains("completed"),
        "{}",
        r.body
    );
}
