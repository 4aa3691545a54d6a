//! `/mcp`: several upstreams as one virtual server, and the features that
//! need messages to travel from the server to the client (sampling,
//! elicitation, roots, progress) through the gateway.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    clients::{self, text_of, tool_names},
    harness::{Gateway, GatewaySpec, Reference, everything, everything_on},
    http::{ACCEPT_BOTH, Http, call_stateless, listen, post_stateless, stateless_meta},
};

#[tokio::test(flavor = "multi_thread")]
async fn one_virtual_server_over_two_upstreams() {
    let reference = Reference::start(None);
    let (_ev, ev_url) = everything().await;
    let (spec, key) = GatewaySpec::open(&[("reference", &reference.url), ("everything", &ev_url)]);
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let auth = key.bearer();

    let listed = clients::ts(&url, &auth, "list", None).await;
    let tools = tool_names(&listed);
    for want in [
        "reference__echo",
        "reference__test_simple_text",
        "everything__echo",
        "everything__trigger-sampling-request",
    ] {
        assert!(
            tools.iter().any(|t| t == want),
            "{want} missing from {tools:?}"
        );
    }
    assert!(tools.iter().all(|t| t.len() <= 64));
    assert_eq!(listed["serverInfo"]["name"], "stoa-gateway");
    let resources = listed["resources"].as_array().expect("resources");
    assert!(
        resources
            .iter()
            .any(|r| r == "stoa://reference/test://static-text"),
        "{resources:?}"
    );

    let r = clients::ts(
        &url,
        &auth,
        "call",
        Some(("reference__echo", json!({"message": "via the aggregate"}))),
    )
    .await;
    assert_eq!(text_of(&r["result"]), "via the aggregate");
    let r = clients::ts(
        &url,
        &auth,
        "call",
        Some(("everything__echo", json!({"message": "to everything"}))),
    )
    .await;
    assert!(text_of(&r["result"]).contains("to everything"), "{r}");

    let r = clients::py(
        &url,
        &auth,
        "call",
        Some(("reference__add", json!({"a": 1, "b": 2}))),
    )
    .await;
    assert_eq!(text_of(&r["result"]), "3");

    // A name too long once prefixed is shortened, and still callable.
    let long = shortened(&tools);
    let r = clients::ts(
        &url,
        &auth,
        "call",
        Some((long.as_str(), json!({"message": "by a short name"}))),
    )
    .await;
    assert_eq!(text_of(&r["result"]), "by a short name", "{r}");
}

/// A session-based client's `tools/call` goes upstream as its own bytes
/// when it can (`aggregate::Direct`), by way of values when it cannot: the
/// client sees no difference, and every refusal is the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_call_is_answered_alike_either_way() {
    let (a, b) = (Reference::start(None), Reference::start(None));
    let (mut spec, key) = GatewaySpec::open(&[("a", &a.url), ("b", &b.url)]);
    spec.keys[0].1[0].1 = vec!["echo".into()];
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let auth = key.bearer();
    let mut s = crate::http::Session::new(&http, &format!("{}/mcp", gw.url()), &auth);
    s.initialize().await;
    let post = |name: &str, id: u64| {
        // Written by hand: the name exactly as given, escapes and all.
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{"message":"m{id}"}},"_meta":{{"progressToken":"p"}}}}}}"#
        );
        let (http, url, headers) = (&http, s.url.clone(), s.headers());
        async move { http.send(Method::POST, &url, &headers, Some(&body)).await }
    };
    // Bytes, then values (an escape in the name), then bytes over the
    // other upstream: the same answer to each.
    let mut results = Vec::new();
    for (i, name) in ["a__echo", r"a__\u0065cho", "b__echo"]
        .into_iter()
        .enumerate()
    {
        let id = i as u64 + 10;
        let r = post(name, id).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
        let v = r.json();
        assert_eq!(v["id"], id, "{name}: {v}");
        assert_eq!(text_of(&v["result"]), format!("m{id}"), "{name}: {v}");
        results.push(v["result"].to_string().replace(&format!("m{id}"), "m"));
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");

    // A 2026-07-28 client (no session): its first call probes what the
    // upstream speaks; then bytes, and values (the escape) again. Each
    // result names its type and the virtual server, as by values.
    let stateless = |name: &str, id: u64| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{"message":"m{id}"}},"_meta":{}}}}}"#,
            stateless_meta()
        );
        let url = s.url.clone();
        let (http, auth) = (&http, &auth);
        async move {
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
                ("accept", ACCEPT_BOTH),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "a__echo"),
            ];
            http.send(Method::POST, &url, &headers, Some(&body)).await
        }
    };
    let mut results = Vec::new();
    for (i, name) in ["a__echo", "a__echo", r"a__\u0065cho"]
        .into_iter()
        .enumerate()
    {
        let id = i as u64 + 20;
        let r = stateless(name, id).await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.body);
        let v = r.json();
        assert_eq!(v["id"], id, "{name}: {v}");
        assert_eq!(text_of(&v["result"]), format!("m{id}"), "{name}: {v}");
        assert_eq!(v["result"]["resultType"], "complete", "{v}");
        assert_eq!(
            v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "stoa-gateway",
            "{v}"
        );
        results.push(v["result"].to_string().replace(&format!("m{id}"), "m"));
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    let refusals = [
        ("a__add", "not_granted"),
        ("a__no_such_tool", "not_granted"),
        ("zz__echo", "invalid_params"),
        ("echo", "invalid_params"),
        ("a__", "invalid_params"),
    ];
    for (name, why) in refusals {
        let v = post(name, 7).await.json();
        assert_eq!(v["id"], 7, "{name}: {v}");
        assert_eq!(v["error"]["data"]["reason"], why, "{name}: {v}");
    }
    // Without its session, a call is refused before anything is sent.
    let headers: Vec<_> = s
        .headers()
        .into_iter()
        .filter(|(k, _)| *k != "mcp-session-id")
        .collect();
    let body = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "a__echo", "arguments": {"message": "x"}}})
    .to_string();
    let v = http
        .send(Method::POST, &s.url, &headers, Some(&body))
        .await
        .json();
    assert_eq!(v["error"]["data"]["reason"], "missing_session", "{v}");
    // Each way counts its call under the upstream's own tool name.
    let metrics = gw.metrics().await;
    let counted = |up: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("stoa_tool_calls_total{"))
            .filter(|l| l.contains(&format!("upstream=\"{up}\"")) && l.contains("tool=\"echo\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(counted("a"), 5.0, "{metrics}");
    assert_eq!(counted("b"), 1.0, "{metrics}");
}

/// The reference's long-named echo as `/mcp` lists it: cut to 64
/// characters, ending in `_` and 8 hex digits.
fn shortened<S: AsRef<str>>(tools: &[S]) -> String {
    let name = tools
        .iter()
        .map(AsRef::as_ref)
        .find(|t| t.starts_with("reference__echo_under_a_name"))
        .unwrap_or_else(|| {
            panic!(
                "no shortened name in {:?}",
                tools.iter().map(AsRef::as_ref).collect::<Vec<_>>()
            )
        })
        .to_owned();
    assert_eq!(name.len(), 64, "{name}");
    let (_, hash) = name.rsplit_once('_').expect("a hash suffix");
    assert!(
        hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_elicitation_and_progress_round_trip() {
    let (_ev, ev_url) = everything().await;
    let (spec, key) = GatewaySpec::open(&[("everything", &ev_url)]);
    let gw = Gateway::start(&spec).await;
    let auth = key.bearer();
    for (url, prefix) in [
        (format!("{}/mcp/everything", gw.url()), ""),
        (format!("{}/mcp", gw.url()), "everything__"),
    ] {
        let tool = format!("{prefix}trigger-sampling-request");
        let r = clients::ts(
            &url,
            &auth,
            "call",
            Some((&tool, json!({"prompt": "hello sampler"}))),
        )
        .await;
        assert_eq!(r["sampling"], 1, "{url}: {r}");
        assert!(text_of(&r["result"]).contains("stoa-sampled"), "{url}: {r}");

        let tool = format!("{prefix}trigger-elicitation-request");
        let r = clients::ts(&url, &auth, "call", Some((&tool, json!({})))).await;
        assert_eq!(r["elicitation"], 1, "{url}: {r}");

        let tool = format!("{prefix}trigger-long-running-operation");
        let r = clients::ts(
            &url,
            &auth,
            "call",
            Some((&tool, json!({"duration": 1, "steps": 4}))),
        )
        .await;
        assert_eq!(
            r["progress"].as_array().map(Vec::len),
            Some(4),
            "{url}: {r}"
        );

        // The SDK cuts the tools/call stream after the first progress event
        // and resumes it with GET + Last-Event-ID through the gateway.
        let r = clients::ts(
            &url,
            &auth,
            "resume",
            Some((&tool, json!({"duration": 2, "steps": 4}))),
        )
        .await;
        assert_eq!(r["resumed"], true, "{url}: {r}");
        assert_eq!(
            r["progress"].as_array().map(Vec::len),
            Some(4),
            "{url}: {r}"
        );

        let tool = format!("{prefix}trigger-sampling-request");
        let r = clients::py(
            &url,
            &auth,
            "call",
            Some((&tool, json!({"prompt": "from python"}))),
        )
        .await;
        assert_eq!(r["sampling"], 1, "{url} (python): {r}");
    }
}

/// 2026-07-28 (stateless) on `/mcp`: the lists the gateway sends each
/// upstream carry the client's `_meta`, which that revision requires on
/// every request, and an upstream's refusal reaches the client with its
/// own code and the upstream named.
#[tokio::test(flavor = "multi_thread")]
async fn the_stateless_revision_is_aggregated() {
    let reference = Reference::start(None);
    let (spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let http = Http::h1();
    let auth = key.bearer();
    let meta = stateless_meta();
    let post = |method: &'static str, name: Option<String>, params: Value| {
        let (http, url, auth) = (&http, &url, &auth);
        async move {
            let r = post_stateless(http, url, Some(auth), method, name.as_deref(), params).await;
            assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
            serde_json::from_str::<Value>(&r.body).expect("JSON")
        }
    };

    // `/mcp` serves `subscriptions/listen`: list changes (its upstreams' and
    // its own, when the key's grants change), and resource updates where an
    // upstream sends them.
    let discovered = post("server/discover", None, json!({"_meta": meta})).await;
    let caps = &discovered["result"]["capabilities"];
    assert_eq!(caps["tools"], json!({"listChanged": true}), "{discovered}");
    assert_eq!(
        caps["prompts"],
        json!({"listChanged": true}),
        "{discovered}"
    );
    assert_eq!(
        caps["resources"],
        json!({"listChanged": true, "subscribe": true}),
        "{discovered}"
    );

    let listed = post("tools/list", None, json!({"_meta": meta})).await;
    let tools: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"reference__echo"), "{tools:?}");
    let long = shortened(&tools);
    assert_eq!(listed["result"]["resultType"], "complete");
    assert_eq!(listed["result"]["cacheScope"], "private");
    assert_eq!(
        listed["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "stoa-gateway"
    );

    let called = post(
        "tools/call",
        Some("reference__echo".into()),
        json!({"name": "reference__echo", "arguments": {"message": "stateless"}, "_meta": meta}),
    )
    .await;
    assert_eq!(text_of(&called["result"]), "stateless", "{called}");
    // A shortened name is found by listing its upstream, with `_meta` too.
    let by_short = post(
        "tools/call",
        Some(long.clone()),
        json!({"name": long, "arguments": {"message": "short"}, "_meta": meta}),
    )
    .await;
    assert_eq!(text_of(&by_short["result"]), "short", "{by_short}");
    // One virtual server: results name the gateway, not the upstream.
    assert_eq!(
        called["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "stoa-gateway",
        "{called}"
    );

    // Served under the key's grants: never a "public" cache hint.
    let read = post(
        "resources/read",
        Some("stoa://reference/test://static-text".into()),
        json!({"uri": "stoa://reference/test://static-text", "_meta": meta}),
    )
    .await;
    assert_eq!(read["result"]["cacheScope"], "private", "{read}");

    // No sessions and no GET stream in this revision: 405, POST only, on
    // both endpoints (a modern-only server answers so).
    for (method, path) in [
        (Method::GET, "/mcp"),
        (Method::DELETE, "/mcp"),
        (Method::GET, "/mcp/reference"),
        (Method::DELETE, "/mcp/reference"),
    ] {
        let r = http
            .send(
                method.clone(),
                &format!("{}{path}", gw.url()),
                &[
                    ("authorization", auth.as_str()),
                    ("accept", "text/event-stream"),
                    ("mcp-protocol-version", "2026-07-28"),
                ],
                None,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            r.body
        );
        assert_eq!(r.headers["allow"], "POST", "{method} {path}");
        let v: Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(v["error"]["data"]["reason"], "method_not_allowed", "{v}");
    }
    // Not for a request that names a session, or an older revision: those
    // take the session path (here, refused for the session it lacks).
    for (version, session) in [("2026-07-28", Some("forged")), ("2025-11-25", None)] {
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("accept", "text/event-stream"),
            ("mcp-protocol-version", version),
        ];
        if let Some(s) = session {
            headers.push(("mcp-session-id", s));
        }
        let r = http.send(Method::GET, &url, &headers, None).await;
        assert_ne!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{version} {session:?}: {}",
            r.body
        );
    }

    // The client's cursor names a page of the merged list, not of an
    // upstream's: it is not sent on (the reference refuses unknown ones).
    let paged = post(
        "tools/list",
        None,
        json!({"cursor": "bogus", "_meta": meta}),
    )
    .await;
    assert!(paged["result"]["tools"].is_array(), "{paged}");

    // Without `_meta` the upstream refuses the list: its code, named, with
    // the status this revision gives invalid params.
    let r = post_stateless(&http, &url, Some(&auth), "tools/list", None, json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let refused = r.json();
    assert_eq!(refused["id"], 1, "{refused}");
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert_eq!(refused["error"]["data"]["reason"], "upstream_refused");
    assert_eq!(refused["error"]["data"]["upstream"], "reference");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("_meta")),
        "{refused}"
    );
}

/// `subscriptions/listen` on `/mcp`: one stream over every upstream's, each
/// asked only for what concerns it, acknowledged once with the union.
#[tokio::test(flavor = "multi_thread")]
async fn change_notifications_are_merged_from_every_upstream() {
    let (a, b) = (Reference::start(None), Reference::start(None));
    let (spec, key) = GatewaySpec::open(&[("a", &a.url), ("b", &b.url)]);
    let mut gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let http = Http::h1();
    let auth = key.bearer();
    let call = |name: &'static str, arguments: Value| {
        let (http, url, auth) = (&http, &url, &auth);
        async move {
            call_stateless(http, url, auth, name, arguments).await;
        }
    };

    let mut stream = listen(
        &http,
        &url,
        &auth,
        json!("watch-1"),
        json!({
            "toolsListChanged": true,
            // No upstream sends these, but the gateway does when the key's
            // grants change: acknowledged.
            "resourcesListChanged": true,
            // Not a resource of any upstream: not acknowledged.
            "resourceSubscriptions": ["stoa://b/test://static-text", "stoa://gone/test://x"],
        }),
    )
    .await;
    let ack = stream.next().await.expect("an acknowledgement");
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "watch-1"
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true, "resourcesListChanged": true,
               "resourceSubscriptions": ["stoa://b/test://static-text"]}),
        "{ack}"
    );

    call("a__test_trigger_tool_change", json!({})).await;
    let changed = stream.next().await.expect("a notification");
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "watch-1",
        "tagged with the client's listen id: {changed}"
    );

    // Prompt changes were not asked for: the next message from `a` is the
    // second tool change, not the prompt change before it. (The reference
    // filters by itself; `unasked_notifications_are_dropped` shows the
    // gateway does too.)
    call("a__test_trigger_prompt_change", json!({})).await;
    call("a__test_trigger_tool_change", json!({})).await;
    let next = stream.next().await.expect("a notification");
    assert_eq!(next["method"], "notifications/tools/list_changed", "{next}");

    // A resource update names the resource as `/mcp` does.
    call(
        "b__test_trigger_resource_update",
        json!({"uri": "test://static-text"}),
    )
    .await;
    let updated = stream.next().await.expect("a notification");
    assert_eq!(
        updated["method"], "notifications/resources/updated",
        "{updated}"
    );
    assert_eq!(updated["params"]["uri"], "stoa://b/test://static-text");
    assert_eq!(
        updated["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "watch-1"
    );

    // A filter that is not one is refused, with a reason (and, on this
    // revision, an HTTP status that says so).
    let bad = post_stateless(
        &http,
        &url,
        Some(&auth),
        "subscriptions/listen",
        None,
        json!({"_meta": stateless_meta(), "notifications": {"toolsListChanged": "yes"}}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(bad.json()["error"]["code"], -32602, "{}", bad.body);
    assert_eq!(bad.json()["error"]["data"]["reason"], "invalid_params");

    // The same through `/mcp/<upstream>`, relayed unchanged.
    let mut direct = listen(
        &http,
        &format!("{}/mcp/a", gw.url()),
        &auth,
        json!(7),
        json!({"promptsListChanged": true}),
    )
    .await;
    let ack = direct.next().await.expect("an acknowledgement");
    assert_eq!(
        ack["params"]["notifications"],
        json!({"promptsListChanged": true}),
        "{ack}"
    );
    call("a__test_trigger_prompt_change", json!({})).await;
    let changed = direct.next().await.expect("a notification");
    assert_eq!(
        changed["method"], "notifications/prompts/list_changed",
        "{changed}"
    );
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        7
    );

    // Draining ends both streams on purpose: each gets its result, so its
    // client knows to listen again elsewhere; and they do not hold the drain.
    gw.proc.signal("TERM");
    for (s, id) in [(&mut stream, json!("watch-1")), (&mut direct, json!(7))] {
        let end = s.until(|v| v.get("id").is_some()).await;
        assert_eq!(end["id"], id, "{end}");
        assert_eq!(end["result"]["resultType"], "complete", "{end}");
        assert_eq!(
            end["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            id
        );
        assert!(s.next().await.is_none(), "the stream ends after its result");
    }
    // Well within `drain_timeout` (30 s): the streams did not hold the drain.
    let status = gw.proc.wait_exit(std::time::Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", gw.log());
}

/// Streams outlive the request that authenticated them: they follow what
/// becomes of their key as the configuration changes.
#[tokio::test(flavor = "multi_thread")]
async fn streams_follow_their_key() {
    let (a, b) = (Reference::start(None), Reference::start(None));
    let (mut spec, key) = GatewaySpec::open(&[("a", &a.url), ("b", &b.url)]);
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let auth = key.bearer();
    let reload = |spec: &GatewaySpec| std::fs::write(&gw.config, spec.yaml(&gw.dir)).unwrap();
    let lists = json!({"toolsListChanged": true, "promptsListChanged": true});
    let open = |path: &str, id: u64| {
        let url = format!("{}{path}", gw.url());
        let (http, auth, lists) = (&http, &auth, lists.clone());
        async move { listen(http, &url, auth, json!(id), lists).await }
    };
    let mut merged = open("/mcp", 1).await;
    let mut only_b = open("/mcp/b", 2).await;
    for s in [&mut merged, &mut only_b] {
        let ack = s.next().await.expect("an acknowledgement");
        assert_eq!(ack["params"]["notifications"], lists, "{ack}");
    }

    // A session-based client's GET stream on `/mcp` too.
    let mut session = crate::http::Session::new(&http, &format!("{}/mcp", gw.url()), &auth);
    session.initialize().await;
    let mut get = crate::http::SseReader::new(
        http.open(Method::GET, &session.url, &session.headers(), None)
            .await,
    );

    // Fewer tools of `a`: `/mcp`'s lists changed, and it says so.
    spec.keys[0].1 = vec![
        ("a".into(), vec!["echo".into()]),
        ("b".into(), vec!["*".into()]),
    ];
    reload(&spec);
    for list in ["tools", "prompts", "resources"] {
        let n = get.next().await.expect("a notification");
        assert_eq!(
            n["method"],
            format!("notifications/{list}/list_changed"),
            "{n}"
        );
    }
    for method in [
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
    ] {
        let n = merged.next().await.expect("a notification");
        assert_eq!(n["method"], method, "{n}");
        assert_eq!(
            n["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            1
        );
    }

    // No more `b`: `/mcp` says its lists changed, then ends the stream on
    // purpose, so the client listens again over its new set of upstreams;
    // the stream from `b` itself ends with a refusal.
    spec.keys[0].1 = vec![("a".into(), vec!["echo".into()])];
    reload(&spec);
    let n = merged.next().await.expect("a notification");
    assert_eq!(n["method"], "notifications/tools/list_changed", "{n}");
    let end = merged.until(|v| v.get("id").is_some()).await;
    assert_eq!(
        end["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"], 1,
        "{end}"
    );
    assert!(merged.next().await.is_none());
    let refused = only_b.until(|v| v.get("id").is_some()).await;
    assert_eq!(refused["id"], 2, "{refused}");
    assert_eq!(
        refused["error"]["data"]["reason"], "not_granted",
        "{refused}"
    );
    assert!(only_b.next().await.is_none());

    // A revoked key loses its streams at once, told why: the merged one,
    // and one relayed from a single upstream.
    let mut revoked = open("/mcp", 3).await;
    let mut relayed = open("/mcp/a", 4).await;
    revoked.next().await.expect("an acknowledgement");
    relayed.next().await.expect("an acknowledgement");
    spec.keys[0].0 = crate::harness::Key::new();
    reload(&spec);
    for (s, id) in [(&mut revoked, 3), (&mut relayed, 4)] {
        let refused = s.until(|v| v.get("id").is_some()).await;
        assert_eq!(refused["id"], id, "{refused}");
        assert_eq!(
            refused["error"]["data"]["reason"], "key_revoked",
            "{refused}"
        );
        assert!(s.next().await.is_none());
    }
}

/// A 2026-07-28 client on `/mcp` also reaches an upstream that only speaks
/// the session-based revisions: the gateway holds a session with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stateless_client_reaches_session_based_upstreams() {
    let reference = Reference::start(None);
    let (_ev, ev_url) = everything().await;
    let (mut spec, key) =
        GatewaySpec::open(&[("reference", &reference.url), ("everything", &ev_url)]);
    let other = crate::harness::Key::new();
    spec.keys
        .push((other.clone(), vec![("everything".into(), vec!["*".into()])]));
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let http = Http::h1();
    let auth = key.bearer();
    let post = |method: &'static str, name: Option<String>, params: Value| {
        let (http, url, auth) = (&http, &url, &auth);
        async move {
            let mut params = params;
            params["_meta"] = stateless_meta();
            let r = post_stateless(http, url, Some(auth), method, name.as_deref(), params).await;
            assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.body);
            r.json()
        }
    };

    let discovered = post("server/discover", None, json!({})).await;
    let caps = &discovered["result"]["capabilities"];
    assert!(
        caps["logging"].is_object(),
        "everything's capabilities (from its initialize) count: {discovered}"
    );

    let listed = post("tools/list", None, json!({})).await;
    let tools: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for want in ["reference__echo", "everything__echo"] {
        assert!(tools.contains(&want), "{want}: {tools:?}");
    }

    for i in 0..3 {
        let called = post(
            "tools/call",
            Some("everything__echo".into()),
            json!({"name": "everything__echo", "arguments": {"message": format!("bridged {i}")}}),
        )
        .await;
        let result = &called["result"];
        assert!(
            text_of(result).contains(&format!("bridged {i}")),
            "{called}"
        );
        // A 2026-07-28 result, though the upstream answered in 2025-11-25.
        assert_eq!(result["resultType"], "complete", "{called}");
        assert_eq!(
            result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "stoa-gateway"
        );
    }

    let resources = post("resources/list", None, json!({})).await;
    let uri = resources["result"]["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{resources}"))
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .find(|u| u.starts_with("stoa://everything/"))
        .unwrap_or_else(|| panic!("no resource of everything: {resources}"))
        .to_owned();
    let read = post("resources/read", Some(uri.clone()), json!({"uri": uri})).await;
    assert_eq!(read["result"]["contents"][0]["uri"], uri, "{read}");

    // Every client of the key shares that session: requests that all carry
    // JSON-RPC id 1 (as `post_stateless` sends) at once still each get
    // their own answer.
    let slow = "everything__trigger-long-running-operation";
    let calls = (0..8).map(|i| {
        let post = &post;
        async move {
            // Half of them last a while, so the others run meanwhile.
            let (name, args, want) = if i % 2 == 0 {
                (
                    slow,
                    json!({"duration": 1, "steps": 1}),
                    "completed".to_owned(),
                )
            } else {
                let m = format!("at once {i}");
                ("everything__echo", json!({"message": m}), m)
            };
            let called = post(
                "tools/call",
                Some(name.into()),
                json!({"name": name, "arguments": args}),
            )
            .await;
            assert_eq!(called["id"], 1, "{called}");
            assert!(
                text_of(&called["result"]).contains(&want),
                "call {i} got another's answer: {called}"
            );
        }
    });
    let lists = (0..4).map(|_| post("tools/list", None, json!({})));
    let (_, lists) = tokio::join!(
        futures_util::future::join_all(calls),
        futures_util::future::join_all(lists)
    );
    for l in lists {
        assert!(
            l["result"]["tools"].as_array().is_some_and(|t| t.len() > 2),
            "{l}"
        );
    }

    // One session for all of it, held by this replica; another key gets
    // its own.
    let log = gw.log();
    assert_eq!(log.matches("bridged session opened").count(), 1, "{log}");
    let theirs = post_stateless(
        &http,
        &url,
        Some(&other.bearer()),
        "tools/call",
        Some("everything__echo"),
        json!({"name": "everything__echo", "arguments": {"message": "other key"},
               "_meta": stateless_meta()}),
    )
    .await;
    assert!(
        text_of(&theirs.json()["result"]).contains("other key"),
        "{}",
        theirs.body
    );
    let log = gw.log();
    assert_eq!(log.matches("bridged session opened").count(), 2, "{log}");
    let m = gw.metrics().await;
    assert!(m.contains("stoa_bridged_sessions 2"), "{m}");
}

/// A session-based upstream that restarts forgets the gateway's bridged
/// session: the next call gets a 404 for it, and the gateway opens another
/// session and sends the call again, once, so the client sees no error.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridged_session_the_upstream_forgot_is_opened_again() {
    let (ev, ev_url) = everything().await;
    let port: u16 = ev_url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/mcp")
        .parse()
        .expect("port");
    let (spec, key) = GatewaySpec::open(&[("everything", &ev_url)]);
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let http = Http::h1();
    let call = |message: &'static str| {
        let (http, url, auth) = (&http, &url, key.bearer());
        async move {
            let args = json!({"message": message});
            let v = call_stateless(http, url, &auth, "everything__echo", args).await;
            assert!(text_of(&v["result"]).contains(message), "{message}: {v}");
        }
    };
    call("before the restart").await;
    drop(ev);
    let (_ev, again) = everything_on(port).await;
    assert_eq!(again, ev_url);
    call("after the restart").await;
    call("and after that").await;
    let log = gw.log();
    assert_eq!(log.matches("bridged session lost").count(), 1, "{log}");
    assert_eq!(log.matches("bridged session opened").count(), 2, "{log}");
}

/// The other way: a session-based client on `/mcp` also reaches an upstream
/// that speaks only 2026-07-28 (no `initialize`, no sessions).
#[tokio::test(flavor = "multi_thread")]
async fn a_session_client_reaches_stateless_only_upstreams() {
    let (classic, modern) = (Reference::start(None), Reference::stateless_only());
    let (spec, key) = GatewaySpec::open(&[("classic", &classic.url), ("modern", &modern.url)]);
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let auth = key.bearer();

    // The official TypeScript SDK client (2025-11-25) lists and calls.
    let listed = clients::ts(&url, &auth, "list", None).await;
    let tools = tool_names(&listed);
    for want in ["classic__echo", "modern__echo"] {
        assert!(tools.iter().any(|t| t == want), "{want}: {tools:?}");
    }
    let r = clients::ts(
        &url,
        &auth,
        "call",
        Some(("modern__echo", json!({"message": "across revisions"}))),
    )
    .await;
    assert_eq!(text_of(&r["result"]), "across revisions", "{r}");

    // Over raw HTTP: a read, routed by its virtual URI, and another call
    // (each request gains the `_meta` and mirrored headers that revision
    // requires; the upstream refuses any request without them).
    let http = Http::h1();
    let mut s = crate::http::Session::new(&http, &url, &auth);
    s.initialize().await;
    let read = s
        .call(
            "resources/read",
            json!({"uri": "stoa://modern/test://static-text"}),
        )
        .await;
    assert_eq!(
        read["result"]["contents"][0]["uri"], "stoa://modern/test://static-text",
        "{read}"
    );
    let added = s
        .call(
            "tools/call",
            json!({"name": "modern__add", "arguments": {"a": 2, "b": 3}}),
        )
        .await;
    assert_eq!(text_of(&added["result"]), "5", "{added}");

    // Its change notifications reach the session's GET stream (it has no
    // GET stream: the gateway listens to it).
    let mut get =
        crate::http::SseReader::new(http.open(Method::GET, &s.url, &s.headers(), None).await);
    s.call(
        "tools/call",
        json!({"name": "modern__test_trigger_tool_change", "arguments": {}}),
    )
    .await;
    let changed = get.next().await.expect("a notification");
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert!(
        changed["params"]["_meta"]
            .get("io.modelcontextprotocol/subscriptionId")
            .is_none(),
        "no 2026 subscription tag on a session's stream: {changed}"
    );
}

/// A tool that mirrors an argument into a header (`x-mcp-header`) on an
/// upstream that speaks only 2026-07-28: a session-based client sends no
/// `Mcp-Param-*`, so the gateway computes it from the tool's input schema
/// (base64 when not plain ASCII), listing the upstream's tools itself, once,
/// when the client has not. The upstream refuses a call without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_client_calls_tools_that_mirror_arguments_into_headers() {
    let modern = Reference::stateless_only();
    let (spec, key) = GatewaySpec::open(&[("modern", &modern.url)]);
    let gw = Gateway::start(&spec).await;
    let url = format!("{}/mcp", gw.url());
    let auth = key.bearer();
    let http = Http::h1();
    let mut s = crate::http::Session::new(&http, &url, &auth);
    s.initialize().await;
    let tool = "modern__test_header_param";
    let check = |region: &str, r: &Value| {
        assert!(
            r.get("error").is_none() && r["result"]["isError"] != true,
            "{region:?}: {r}"
        );
        assert_eq!(text_of(&r["result"]), format!("Region: {region}"), "{r}");
    };

    // No list yet: calls at once, one listing of the upstream's tools.
    let regions = ["eu-west-1", " Zürich", "=?base64?SGVsbG8=?=", "tab\there"];
    let calls = regions.iter().enumerate().map(|(i, region)| {
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": tool, "arguments": {"region": region}}});
        let (http, url, headers) = (&http, &url, s.headers());
        async move {
            let r = http
                .send(Method::POST, url, &headers, Some(&body.to_string()))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{region:?}: {}", r.body);
            r.json()
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (region, r) in regions.iter().zip(&answers) {
        check(region, r);
    }
    let fetched = || {
        gw.log()
            .matches("listed tools for their parameter headers")
            .count()
    };
    assert_eq!(fetched(), 1, "{}", gw.log());

    // Listed by the client: known from that list, not listed again.
    let listed = s.call("tools/list", json!({})).await;
    assert!(
        listed["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == tool)),
        "{listed}"
    );
    let r = s
        .call(
            "tools/call",
            json!({"name": tool, "arguments": {"region": "us-east-2"}}),
        )
        .await;
    check("us-east-2", &r);

    // The official TypeScript SDK client (2025-11-25) too.
    let r = clients::ts(
        &url,
        &auth,
        "call",
        Some((tool, json!({"region": "Zürich"}))),
    )
    .await;
    check("Zürich", &r);
    assert_eq!(fetched(), 1, "{}", gw.log());
}

/// An upstream that sends what was not asked for on a listen stream: the
/// gateway drops it, as the spec requires of the server the client sees.
#[tokio::test(flavor = "multi_thread")]
async fn unasked_notifications_are_dropped() {
    let loose = Reference::ignoring_listen_filters();
    let (spec, key) = GatewaySpec::open(&[("loose", &loose.url)]);
    let gw = Gateway::start(&spec).await;
    let http = Http::h1();
    let auth = key.bearer();
    let trigger = |name: &'static str| {
        let (http, auth, url) = (&http, &auth, format!("{}/mcp", gw.url()));
        async move {
            call_stateless(http, &url, auth, name, json!({})).await;
        }
    };
    // Straight to the upstream, the misbehaviour shows.
    let mut direct = listen(
        &http,
        &format!("{}/mcp/loose", gw.url()),
        &auth,
        json!(1),
        json!({"promptsListChanged": true}),
    )
    .await;
    let mut merged = listen(
        &http,
        &format!("{}/mcp", gw.url()),
        &auth,
        json!(2),
        json!({"promptsListChanged": true}),
    )
    .await;
    direct.next().await.expect("an acknowledgement");
    merged.next().await.expect("an acknowledgement");
    trigger("loose__test_trigger_tool_change").await;
    trigger("loose__test_trigger_prompt_change").await;
    let leaked = direct.next().await.expect("a notification");
    assert_eq!(
        leaked["method"], "notifications/tools/list_changed",
        "{leaked}"
    );
    let first = merged.next().await.expect("a notification");
    assert_eq!(
        first["method"], "notifications/prompts/list_changed",
        "the tool change before it was dropped: {first}"
    );
}
