//! `/mcp`: several upstreams as one virtual server, and the features that
//! need messages to travel from the server to the client (sampling,
//! elicitation, roots, progress) through the gateway.

use serde_json::json;

use crate::{
    clients::{self, text_of, tool_names},
    harness::{Gateway, GatewaySpec, Reference, everything},
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
