//! The official MCP SDK clients (TypeScript and Python) and an HTTP/3
//! client, run as child processes; each prints one JSON object.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::process::Command;

use crate::harness::{node_clients, python};

async fn run(mut cmd: Command, what: &str) -> Value {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// The TypeScript SDK client: `scenario` is list, call or session.
pub async fn ts(url: &str, auth: &str, scenario: &str, tool: Option<(&str, Value)>) -> Value {
    let dir = node_clients();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("ts-client.mjs"))
        .args([
            "--url",
            url,
            "--header",
            &format!("Authorization: {auth}"),
            "--scenario",
            scenario,
        ])
        .current_dir(&dir);
    if let Some((name, args)) = tool {
        cmd.args(["--tool", name, "--args", &args.to_string()]);
    }
    run(cmd, &format!("ts-client {scenario}")).await
}

/// The Python SDK client: `scenario` is list or call.
pub async fn py(url: &str, auth: &str, scenario: &str, tool: Option<(&str, Value)>) -> Value {
    let dir = node_clients();
    let mut cmd = Command::new(python());
    cmd.arg(dir.join("py-client.py")).args([
        "--url",
        url,
        "--header",
        &format!("Authorization: {auth}"),
        "--scenario",
        scenario,
    ]);
    if let Some((name, args)) = tool {
        cmd.args(["--tool", name, "--args", &args.to_string()]);
    }
    run(cmd, &format!("py-client {scenario}")).await
}

/// niquests over QUIC only: initialize, list, call.
pub async fn h3(url: &str, ca: &std::path::Path, auth: &str, tool: (&str, Value)) -> Value {
    let dir = node_clients();
    let mut cmd = Command::new(python());
    cmd.arg(dir.join("h3-client.py"))
        .args(["--url", url, "--ca"])
        .arg(ca)
        .args([
            "--header",
            &format!("Authorization: {auth}"),
            "--tool",
            tool.0,
            "--args",
            &tool.1.to_string(),
        ]);
    run(cmd, "h3-client").await
}

pub fn tool_names(v: &Value) -> Vec<String> {
    v["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}
