//! `cargo xtask demo`: the reference upstream and a gateway on this machine,
//! a real MCP tool call through the gateway, and the URLs and key to go on
//! with. Everything it writes lives under `target/demo/`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{cargo, root, sh};

#[derive(clap::Args)]
pub struct Args {
    /// More upstream MCP servers the demo key may use, as NAME=URL (repeatable).
    #[arg(long = "upstream", value_name = "NAME=URL")]
    upstreams: Vec<String>,
    /// Cleartext port (HTTP/1.1 + h2c).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// TLS port (HTTP/1.1 + HTTP/2), and HTTP/3 on the same UDP port.
    #[arg(long, default_value_t = 8443)]
    tls_port: u16,
    /// Start, show the call, then stop (for scripts and tests).
    #[arg(long)]
    once: bool,
}

impl Args {
    /// Free-standing ports, start, call, stop: what CI runs.
    pub fn once(port: u16, tls_port: u16) -> Args {
        Args {
            upstreams: Vec::new(),
            port,
            tls_port,
            once: true,
        }
    }
}

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let extra = args
        .upstreams
        .iter()
        .map(|u| {
            let (name, url) = u
                .split_once('=')
                .with_context(|| format!("--upstream {u:?}: expected NAME=URL"))?;
            Ok((name.to_owned(), url.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    run_cmd_build()?;
    let bin = target_dir().join("debug");
    let demo = root().join("target/demo");
    std::fs::create_dir_all(&demo)?;
    stop_previous(&demo);
    let mut children = Children(Vec::new());

    // The reference upstream, on a free port.
    let mut reference = Command::new(bin.join("stoa-reference"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(demo.join("reference.log"))?)
        .spawn()
        .context("starting stoa-reference")?;
    let mut line = String::new();
    BufReader::new(reference.stdout.take().context("reference stdout")?).read_line(&mut line)?;
    let reference_url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http"))
        .with_context(|| format!("stoa-reference said {line:?}"))?
        .to_owned();
    children.0.push(("stoa-reference".into(), reference));

    // A key, shown once, stored hashed.
    let out = Command::new(bin.join("stoa-gateway"))
        .arg("gen-key")
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let field = |name: &str| -> anyhow::Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .with_context(|| format!("gen-key printed no {name}"))
    };
    let (key, prefix, hash) = (field("key:")?, field("prefix:")?, field("hash:")?);

    let mut upstreams = vec![("reference".to_owned(), reference_url.clone())];
    upstreams.extend(extra);
    let config = demo.join("gateway.yaml");
    std::fs::write(
        &config,
        config_yaml(&args, &demo, &upstreams, &prefix, &hash),
    )?;

    let ready = demo.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let gateway = Command::new(bin.join("stoa-gateway"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::fs::File::create(demo.join("gateway.log"))?)
        .spawn()
        .context("starting stoa-gateway")?;
    children.0.push(("stoa-gateway".into(), gateway));
    std::fs::write(
        demo.join("pids"),
        children
            .0
            .iter()
            .map(|(_, c)| c.id().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    let bound = wait_ready(&ready, &mut children)?;

    let base = format!("http://127.0.0.1:{}", args.port);
    let h3 = format!("https://127.0.0.1:{}", args.tls_port);
    let ca = bound
        .split("\"ca\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("")
        .to_owned();
    let answer = demo_call(&format!("127.0.0.1:{}", args.port), &key)?;

    let env = format!(
        "STOA_GATEWAY_URL={base}\nSTOA_GATEWAY_H3_URL={h3}\nSTOA_CA_CERT={ca}\nSTOA_API_KEY={key}\n"
    );
    std::fs::write(demo.join("demo.env"), &env)?;
    println!(
        "\nSTOA demo is running.\n\
         \n  MCP endpoint (every granted upstream): {base}/mcp\
         \n  one upstream:                           {base}/mcp/reference\
         \n  TLS (h1/h2) and HTTP/3:                 {h3}/mcp   (trust {ca})\
         \n  metrics:                                {base}/metrics\
         \n  API key (shown once):                   {key}\
         \n  upstreams:                              {}\
         \n\nA real tool call just went through the gateway:\n  tools/call reference__echo -> {answer}\n\
         \nVariables for scripts: target/demo/demo.env. Logs: target/demo/*.log.\n\
         \nTry it:\n  curl -s {base}/mcp -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -H 'Accept: application/json, text/event-stream' \\\n    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"0\"}}}}}}' -i\n",
        upstreams
            .iter()
            .map(|(n, u)| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if args.once {
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for (name, c) in &mut children.0 {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited ({status}); see target/demo/*.log");
            }
        }
    }
}

fn run_cmd_build() -> anyhow::Result<()> {
    sh(cargo().args([
        "build",
        "--quiet",
        "-p",
        "stoa-gateway",
        "-p",
        "stoa-loadtest",
    ]))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn stop_previous(demo: &Path) {
    if let Ok(pids) = std::fs::read_to_string(demo.join("pids")) {
        for pid in pids.lines().filter(|p| !p.trim().is_empty()) {
            let _ = Command::new("kill")
                .arg(pid.trim())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn config_yaml(
    args: &Args,
    demo: &Path,
    upstreams: &[(String, String)],
    prefix: &str,
    hash: &str,
) -> String {
    let mut y = format!(
        "# Written by `cargo xtask demo`.\nlisteners:\n  plain: 127.0.0.1:{}\n  tls: {{addr: 127.0.0.1:{}, dev_cert_dir: {:?}}}\n",
        args.port,
        args.tls_port,
        demo.join("tls")
    );
    y.push_str("tenants: [{name: demo}]\nupstreams:\n");
    for (n, u) in upstreams {
        y.push_str(&format!("  - {{name: {n}, url: {u:?}}}\n"));
    }
    y.push_str("subscriptions:\n");
    for (n, _) in upstreams {
        y.push_str(&format!(
            "  - {{name: demo-{n}, tenant: demo, upstream: {n}, tools: [\"*\"]}}\n"
        ));
    }
    let subs: Vec<String> = upstreams.iter().map(|(n, _)| format!("demo-{n}")).collect();
    y.push_str(&format!(
        "api_keys:\n  - {{name: demo, tenant: demo, prefix: {prefix}, hash: \"{hash}\", subscriptions: [{}]}}\n",
        subs.join(", ")
    ));
    y
}

fn wait_ready(ready: &Path, children: &mut Children) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(ready) {
            return Ok(s);
        }
        for (name, c) in &mut children.0 {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited ({status}); see target/demo/{name}.log");
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the gateway did not become ready; see target/demo/gateway.log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// initialize → notifications/initialized → tools/call, over plain HTTP/1.1.
fn demo_call(addr: &str, key: &str) -> anyhow::Result<String> {
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"xtask-demo","version":"0"}}}"#;
    let (status, headers, body) = post(addr, key, None, init)?;
    if status != 200 {
        bail!("initialize answered {status}: {body}");
    }
    let session = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("mcp-session-id"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .context("no Mcp-Session-Id")?;
    post(
        addr,
        key,
        Some(&session),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )?;
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"reference__echo","arguments":{"message":"hello from the STOA demo"}}}"#;
    let (status, _, body) = post(addr, key, Some(&session), call)?;
    if status != 200 || !body.contains("hello from the STOA demo") {
        bail!("tools/call answered {status}: {body}");
    }
    Ok(body)
}

fn post(
    addr: &str,
    key: &str,
    session: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let session = session
        .map(|v| format!("Mcp-Session-Id: {v}\r\nMCP-Protocol-Version: 2025-11-25\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{session}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((status, head.to_owned(), body.to_owned()))
}
