//! The whole platform as real processes: `stoa-control` on a real Postgres
//! (or SQLite), `stoa-gateway` processes fed by it, `stoactl`, and the
//! reference MCP upstream.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use crate::harness::{
    ControlPlane, Gateway, call_echo, eventually, fresh_database, http, http_full, reference,
    temp_dir,
};

const WAIT: Duration = Duration::from_secs(20);

/// Tenant `acme`, upstream `ref`, subscription `s1`; returns nothing: keys
/// are made by the tests.
fn seed(cp: &ControlPlane, upstream_url: &str) {
    cp.ctl(&["create", "tenant", "acme"]);
    cp.ctl(&["create", "upstream", "ref", "--url", upstream_url]);
    cp.ctl(&[
        "create",
        "subscription",
        "s1",
        "--tenant",
        "acme",
        "--upstream",
        "ref",
    ]);
}

fn new_key(cp: &ControlPlane) -> (String, u64) {
    let v = cp.ctl_json(&[
        "create",
        "key",
        "--tenant",
        "acme",
        "--name",
        "it",
        "--subscription",
        "s1",
    ]);
    (
        v["key"].as_str().unwrap().to_owned(),
        v["revision"].as_str().unwrap().parse().unwrap(),
    )
}

async fn until_status(gw: &Gateway, key: &str, want: u16) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = call_echo(gw.addr, key).await;
        if status == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            let log = gw.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            panic!(
                "gateway {} answered {status} {body}, not {want}; its log ends:\n{}",
                gw.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gateways(cp: &ControlPlane) -> Vec<Value> {
    cp.ctl_json(&["gateways"])["gateways"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn revision_of(v: &Value) -> u64 {
    v["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_with_stoactl_works_on_every_gateway_and_revocation_reaches_all() {
    let db = fresh_database("postgres").await;
    let cp = ControlPlane::start(&db, None).await;
    seed(&cp, &reference());
    let dir = temp_dir("fleet");
    let mut fleet = Vec::new();
    for i in 0..3 {
        fleet.push(
            Gateway::start(&cp.xds_url(), &format!("gw-{i}"), &dir.join(i.to_string())).await,
        );
    }
    let (key, _) = new_key(&cp);
    for gw in &fleet {
        until_status(gw, &key, 200).await;
        let (_, body) = call_echo(gw.addr, &key).await;
        assert!(body.contains("hi"), "the call went through: {body}");
    }
    let revoked = cp.ctl_json(&["revoke", &key]);
    let at = revision_of(&revoked);
    for gw in &fleet {
        until_status(gw, &key, 401).await;
    }
    // The control plane knows each gateway and the revision it serves.
    eventually("every gateway to ACK the revocation", WAIT, || async {
        let gws = gateways(&cp);
        (gws.len() == 3
            && gws
                .iter()
                .all(|g| g["connected"] == true && revision_of(g) >= at))
        .then_some(())
    })
    .await;
    // Bad input is refused with the field named.
    let (ok, _, err) = cp.try_ctl(&["create", "upstream", "bad", "--url", "ftp://nope"]);
    assert!(
        !ok && err.contains("InvalidArgument") && err.contains("upstream.url"),
        "{err}"
    );
    let (ok, _, err) = cp.try_ctl(&["delete", "tenant", "acme"]);
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("subscription"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_outage_and_changes_flow_after_restart() {
    let db = fresh_database("postgres").await;
    let mut cp = ControlPlane::start(&db, None).await;
    seed(&cp, &reference());
    let dir = temp_dir("outage");
    let a = Gateway::start(&cp.xds_url(), "gw-a", &dir.join("a")).await;
    let b = Gateway::start(&cp.xds_url(), "gw-b", &dir.join("b")).await;
    let c = Gateway::start(&cp.xds_url(), "gw-c", &dir.join("c")).await;
    let (key, _) = new_key(&cp);
    for gw in [&a, &b, &c] {
        until_status(gw, &key, 200).await;
    }

    // Steady traffic on both gateways, counting every failure.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, ok, failed, key) = (stop.clone(), ok.clone(), failed.clone(), key.clone());
        let addrs = [a.addr, b.addr];
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = call_echo(addrs[i % 2], &key).await;
                if status == 200 && body.contains("hi") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during the outage: {status} {body}");
                }
                i += 1;
            }
        })
    };
    let before = ok.load(Ordering::Relaxed);
    eventually("traffic to flow", WAIT, || async {
        (ok.load(Ordering::Relaxed) > before + 20).then_some(())
    })
    .await;

    let ports = (cp.admin, cp.xds);
    cp.kill();
    let during = ok.load(Ordering::Relaxed);
    eventually(
        "traffic to flow with the control plane gone",
        WAIT,
        || async { (ok.load(Ordering::Relaxed) > during + 50).then_some(()) },
    )
    .await;

    // A gateway restarted during the outage serves its cached config.
    drop(c);
    let restarted = Gateway::start(&format!("http://{}", ports.1), "gw-c", &dir.join("c")).await;
    let (status, _) = http(restarted.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(
        status, 200,
        "ready from its cache file while the control plane is down"
    );
    assert_eq!(call_echo(restarted.addr, &key).await.0, 200);

    // A gateway with no cache and no control plane is not ready, and says why.
    let lonely = Gateway::start(&format!("http://{}", ports.1), "gw-new", &dir.join("new")).await;
    assert_eq!(http(lonely.addr, "GET", "/readyz", &[], "").await.0, 503);
    let (status, body) = call_echo(lonely.addr, &key).await;
    assert_eq!(status, 503);
    assert!(body.contains("not_configured"), "{body}");

    let cp = ControlPlane::start(&db, Some(ports)).await;
    assert!(cp.log().contains("stoa-control ready"));
    // Gateways resync on their own and new changes reach them.
    let (key2, _) = new_key(&cp);
    for gw in [&a, &b, &restarted, &lonely] {
        until_status(gw, &key2, 200).await;
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the outage"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert_eq!(http(lonely.addr, "GET", "/readyz", &[], "").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_a_gateway_cannot_accept_is_nacked_and_the_last_good_one_serves() {
    let db = fresh_database("sqlite").await;
    let cp = ControlPlane::start(&db, None).await;
    seed(&cp, &reference());
    let dir = temp_dir("nack");
    let gw = Gateway::start(&cp.xds_url(), "gw-n", &dir).await;
    let (key, good) = new_key(&cp);
    until_status(&gw, &key, 200).await;

    // The control plane accepts a header that refers to the gateway's
    // environment; this gateway does not have that variable.
    let made = cp.ctl_json(&[
        "create",
        "upstream",
        "needs-env",
        "--url",
        "http://127.0.0.1:9/mcp",
        "--header",
        "X-Token=${STOA_IT_VARIABLE_NOBODY_SETS}",
    ]);
    let bad = revision_of(&made);
    let status = eventually("the NACK to show in the admin API", WAIT, || async {
        gateways(&cp).into_iter().find(|g| {
            g["gatewayId"] == "gw-n" && g["lastNackRevision"].as_str() == Some(&bad.to_string())
        })
    })
    .await;
    let reason = status["lastNack"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("STOA_IT_VARIABLE_NOBODY_SETS"), "{status}");
    assert_eq!(status["lastNack"][0]["resource"]["name"], "needs-env");
    assert_eq!(
        revision_of(&status),
        good,
        "it still serves the last good revision"
    );
    assert_eq!(
        call_echo(gw.addr, &key).await.0,
        200,
        "and keeps serving it"
    );

    // Removing the bad resource lets the next revision through.
    cp.ctl(&["delete", "upstream", "needs-env"]);
    let (key2, _) = new_key(&cp);
    until_status(&gw, &key2, 200).await;
    let g = eventually("the NACK to clear", WAIT, || async {
        gateways(&cp).into_iter().find(|g| {
            g["gatewayId"] == "gw-n" && g["lastNack"].as_array().is_none_or(|a| a.is_empty())
        })
    })
    .await;
    assert!(revision_of(&g) > bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_plane_replicas_on_one_postgres_both_propagate() {
    let db = fresh_database("postgres").await;
    let one = ControlPlane::start(&db, None).await;
    let two = ControlPlane::start(&db, None).await;
    seed(&one, &reference());
    let dir = temp_dir("replicas");
    let g1 = Gateway::start(&one.xds_url(), "gw-1", &dir.join("1")).await;
    let g2 = Gateway::start(&two.xds_url(), "gw-2", &dir.join("2")).await;

    let (via_one, _) = new_key(&one);
    let (via_two, _) = new_key(&two);
    for gw in [&g1, &g2] {
        until_status(gw, &via_one, 200).await;
        until_status(gw, &via_two, 200).await;
    }
    two.ctl(&["revoke", &via_one]);
    one.ctl(&["revoke", &via_two]);
    for gw in [&g1, &g2] {
        until_status(gw, &via_one, 401).await;
        until_status(gw, &via_two, 401).await;
    }
    // Either replica shows both gateways.
    let listed = gateways(&two);
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|g| g["gatewayId"].as_str())
        .collect();
    assert!(ids.contains(&"gw-1") && ids.contains(&"gw-2"), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_http_json_is_the_same_api() {
    let db = fresh_database("sqlite").await;
    let cp = ControlPlane::start(&db, None).await;
    let auth = format!("Bearer {}", crate::harness::ADMIN_TOKEN);
    let call = |method: &'static str, body: &'static str| {
        let auth = auth.clone();
        let addr = cp.admin;
        async move {
            let (status, body) = http(
                addr,
                "POST",
                &format!("/v1/admin/{method}"),
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
            (
                status,
                serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = call(
        "CreateResource",
        r#"{"resource":{"tenant":{"name":"acme"}}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["resource"]["tenant"]["name"], "acme");
    let (s, v) = call(
        "CreateResource",
        r#"{"resource":{"tenant":{"name":"acme"}}}"#,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("already_exists")),
        "{v}"
    );
    let (s, v) = call(
        "CreateResource",
        r#"{"resource":{"upstream":{"name":"gh","url":"https://x/mcp","headers":{"Authorization":"Bearer s3cret"}}}}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["resource"]["upstream"]["headers"]["Authorization"], "",
        "secrets are not shown"
    );
    let (s, v) = call(
        "CreateResource",
        r#"{"resource":{"upstream":{"name":"Bad Name","url":"https://x"}}}"#,
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["message"].as_str().unwrap().starts_with("upstream.name:"),
        "{v}"
    );
    let (s, v) = call(
        "GetResource",
        r#"{"resource":{"kind":"KIND_TENANT","name":"nope"}}"#,
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_found")));
    let (s, v) = call("ListResources", r#"{"kind":"KIND_UPSTREAM"}"#).await;
    assert_eq!(s, 200);
    assert_eq!(v["resources"].as_array().unwrap().len(), 1);
    let (s, v) = call("CreateResource", r#"{"resource":"#).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = call("NoSuchMethod", "{}").await;
    assert_eq!(s, 501);
    let (s, v) = http(cp.admin, "POST", "/v1/admin/GetStatus", &[], "{}").await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = call("ListAudit", "{}").await;
    assert_eq!(s, 200);
    let gh = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["name"] == "gh")
        .unwrap()
        .clone();
    assert_eq!(gh["actor"], "bootstrap-admin");
    assert!(
        gh["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{gh}"
    );
    assert!(!gh["afterJson"].as_str().unwrap().contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reflection_lists_the_admin_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let db = fresh_database("sqlite").await;
    let cp = ControlPlane::start(&db, None).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cp.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"stoa.v1.Admin".to_owned()), "{names:?}");
}

/// A 2025-11-25 request with a session, through one gateway.
async fn session_post(
    gw: &Gateway,
    key: &str,
    session: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s));
        headers.push(("mcp-protocol-version", "2025-11-25"));
    }
    http_full(gw.addr, "POST", "/mcp/ref", &headers, body).await
}

fn session_id(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("mcp-session-id"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .expect("a session id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_move_between_gateways_and_survive_key_rotation_and_tools_are_discovered() {
    let db = fresh_database("sqlite").await;
    let cp = ControlPlane::start(&db, None).await;
    seed(&cp, &reference());
    let dir = temp_dir("sessions");
    let a = Gateway::start(&cp.xds_url(), "gw-a", &dir.join("a")).await;
    let b = Gateway::start(&cp.xds_url(), "gw-b", &dir.join("b")).await;
    let (key, _) = new_key(&cp);
    until_status(&a, &key, 200).await;
    until_status(&b, &key, 200).await;

    // Opened on A, used on B: both hold the control plane's session keys.
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"it","version":"0"}}}"#;
    let (status, head, body) = session_post(&a, &key, None, init).await;
    assert_eq!(status, 200, "{body}");
    let sid = session_id(&head);
    let (status, _, _) = session_post(
        &b,
        &key,
        Some(&sid),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let echo = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"across"}}}"#;
    let (status, _, body) = session_post(&b, &key, Some(&sid), echo).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("across"), "{body}");

    // After a rotation the session still opens (the old key stays accepted).
    let rotated = cp.ctl_json(&["rotate-session-keys"]);
    let at = revision_of(&rotated);
    eventually("both gateways to take the rotation", WAIT, || async {
        let gws = gateways(&cp);
        (gws.iter().filter(|g| revision_of(g) >= at).count() == 2).then_some(())
    })
    .await;
    for gw in [&a, &b] {
        let (status, _, body) = session_post(gw, &key, Some(&sid), echo).await;
        assert_eq!(status, 200, "{body}");
    }

    // The catalog: discovered when the upstream was made, and on demand.
    let tools = eventually("the catalog to fill", WAIT, || async {
        let v = cp.ctl_json(&["get", "tools", "--upstream", "ref"]);
        let names: Vec<String> = v["resources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["tool"]["name"].as_str().map(str::to_owned))
            .collect();
        (!names.is_empty()).then_some(names)
    })
    .await;
    assert!(tools.contains(&"echo".to_owned()), "{tools:?}");
    let now = cp.ctl(&["discover", "ref"]);
    assert!(now.contains("echo"), "{now}");

    // A tenant policy narrows what the subscription grants, on every gateway.
    cp.ctl(&[
        "create", "policy", "no-echo", "--tenant", "acme", "--deny", "ec*",
    ]);
    for gw in [&a, &b] {
        eventually("the policy to refuse echo", WAIT, || async {
            let (status, body) = call_echo(gw.addr, &key).await;
            // 2026-07-28 gives a refusal its HTTP status.
            (status == 403 && body.contains("not_granted")).then_some(())
        })
        .await;
    }
    cp.ctl(&["delete", "policy", "no-echo"]);
    for gw in [&a, &b] {
        eventually("echo to come back", WAIT, || async {
            let (status, body) = call_echo(gw.addr, &key).await;
            (status == 200 && body.contains("hi")).then_some(())
        })
        .await;
    }
}
