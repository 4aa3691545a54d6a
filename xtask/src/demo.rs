//! `cargo xtask demo`: the whole platform on this machine on embedded
//! defaults: the control plane (SQLite, or `--database-url`), N gateways fed
//! by it, and the reference upstream; a tenant, plan, subscriptions and a key
//! seeded through the admin API (`stoactl`); a real MCP tool call through the
//! gateway; and the URLs, tokens and key to go on with. Everything it writes
//! lives under `target/demo/`.

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
    /// Cleartext port (HTTP/1.1 + h2c) of the first gateway; gateway i uses port+i.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// TLS port (HTTP/1.1 + HTTP/2, and HTTP/3 on UDP) of the first gateway; gateway i uses tls_port+i.
    #[arg(long, default_value_t = 8443)]
    tls_port: u16,
    /// Admin API port (gRPC + HTTP/JSON).
    #[arg(long, default_value_t = 7070)]
    admin_port: u16,
    /// Config-stream port the gateways connect to.
    #[arg(long, default_value_t = 7071)]
    xds_port: u16,
    /// How many gateways the control plane feeds.
    #[arg(long, default_value_t = 1)]
    gateways: u16,
    /// The store: `postgres://…` instead of the embedded SQLite file
    /// (target/demo/stoa.db, made afresh on every run).
    #[arg(long)]
    database_url: Option<String>,
    /// Start, show the call, then stop (for scripts and tests).
    #[arg(long)]
    once: bool,
}

impl Args {
    /// Ports from `free`, start, call, stop: what CI runs.
    pub fn once(mut free: impl FnMut() -> std::io::Result<u16>) -> std::io::Result<Args> {
        Ok(Args {
            upstreams: Vec::new(),
            port: free()?,
            tls_port: free()?,
            admin_port: free()?,
            xds_port: free()?,
            gateways: 1,
            database_url: None,
            once: true,
        })
    }
}

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Children {
    fn check(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.0 {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited ({status}); see target/demo/*.log");
            }
        }
        Ok(())
    }
}

fn random_token(role: &str) -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(format!(
        "stoa-{role}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
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
    if args.gateways == 0 {
        bail!("--gateways must be at least 1");
    }

    let bin = build_binaries(false)?;
    let demo = root().join("target/demo");
    std::fs::create_dir_all(&demo)?;
    stop_previous(&demo);
    let mut children = Children(Vec::new());
    let record_pids = |children: &Children| {
        std::fs::write(
            demo.join("pids"),
            children
                .0
                .iter()
                .map(|(_, c)| c.id().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };

    // The reference upstream, on a free port.
    let (reference, reference_url) = start_reference(
        &bin,
        std::fs::File::create(demo.join("reference.log"))?.into(),
    )?;
    children.0.push(("stoa-reference".into(), reference));

    // The control plane. The demo makes its tokens so it can print them.
    let database_url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            for f in ["stoa.db", "stoa.db-wal", "stoa.db-shm"] {
                let _ = std::fs::remove_file(demo.join(f));
            }
            format!("sqlite://{}", demo.join("stoa.db").display())
        }
    };
    let admin_token = random_token("admin")?;
    let gateway_token = random_token("gateway")?;
    let cp_ready = demo.join("control-ready.json");
    let _ = std::fs::remove_file(&cp_ready);
    let control = Command::new(bin.join("stoa-control"))
        .args(["--database-url", &database_url])
        .args(["--admin-listen", &format!("127.0.0.1:{}", args.admin_port)])
        .args(["--xds-listen", &format!("127.0.0.1:{}", args.xds_port)])
        .arg("--ready-file")
        .arg(&cp_ready)
        .env("STOA_ADMIN_TOKEN", &admin_token)
        .env("STOA_GATEWAY_TOKEN", &gateway_token)
        .stderr(std::fs::File::create(demo.join("control.log"))?)
        .spawn()
        .context("starting stoa-control")?;
    children.0.push(("stoa-control".into(), control));
    record_pids(&children)?;
    wait_ready(&cp_ready, &mut children, "control")?;
    let admin_url = format!("http://127.0.0.1:{}", args.admin_port);

    // Seed through the admin API, as an operator would.
    let mut upstreams = vec![("reference".to_owned(), reference_url.clone())];
    upstreams.extend(extra);
    let mut seed = vec![
        serde_json::json!({"tenant": {"name": "demo", "displayName": "Demo tenant"}}),
        serde_json::json!({"plan": {"name": "demo", "tenant": "demo", "requestsPerMinute": 600, "requestsPerDay": 100000}}),
    ];
    for (n, u) in &upstreams {
        seed.push(serde_json::json!({"upstream": {"name": n, "url": u}}));
        seed.push(serde_json::json!({"subscription": {"name": format!("demo-{n}"), "tenant": "demo", "upstream": n, "tools": ["*"], "plan": "demo"}}));
    }
    let seed_file = demo.join("seed.json");
    std::fs::write(&seed_file, serde_json::to_string_pretty(&seed)?)?;
    let stoactl = |extra: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin.join("stoactl"))
            .args(["--server", &admin_url])
            .args(extra)
            .env("STOA_ADMIN_TOKEN", &admin_token)
            .output()
            .context("running stoactl")?;
        if !out.status.success() {
            bail!(
                "stoactl {extra:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    };
    stoactl(&["apply", "-f", &seed_file.to_string_lossy()])?;
    let subs: Vec<String> = upstreams.iter().map(|(n, _)| format!("demo-{n}")).collect();
    let made: serde_json::Value = serde_json::from_str(&stoactl(&[
        "-o",
        "json",
        "create",
        "key",
        "--tenant",
        "demo",
        "--name",
        "demo",
        "--subscription",
        &subs.join(","),
    ])?)?;
    let key = made["key"]
        .as_str()
        .context("stoactl printed no key")?
        .to_owned();
    // The revision that holds the key: each gateway must serve at least it.
    let key_revision: u64 = made["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .context("stoactl printed no revision")?;
    // A cache from an earlier run would make a gateway ready before it has
    // this run's key.
    for i in 0..args.gateways {
        let _ = std::fs::remove_file(demo.join(format!("gateway-{i}.cache")));
    }

    // The gateways, fed by the control plane.
    let mut bound = Vec::new();
    for i in 0..args.gateways {
        let config = demo.join(format!("gateway-{i}.yaml"));
        std::fs::write(&config, gateway_yaml(&args, &demo, i))?;
        let ready = demo.join(format!("gateway-{i}-ready.json"));
        let _ = std::fs::remove_file(&ready);
        let gateway = Command::new(bin.join("stoa-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .env("STOA_GATEWAY_TOKEN", &gateway_token)
            .stderr(std::fs::File::create(
                demo.join(format!("gateway-{i}.log")),
            )?)
            .spawn()
            .context("starting stoa-gateway")?;
        children.0.push((format!("stoa-gateway-{i}"), gateway));
        record_pids(&children)?;
        bound.push(wait_ready(&ready, &mut children, &format!("gateway-{i}"))?);
    }
    for i in 0..args.gateways {
        wait_configured(
            &format!("127.0.0.1:{}", args.port + i),
            key_revision,
            &mut children,
        )?;
    }

    let base = format!("http://127.0.0.1:{}", args.port);
    let h3 = format!("https://127.0.0.1:{}", args.tls_port);
    let ca = bound[0]
        .split("\"ca\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("")
        .to_owned();
    let answer = demo_call(&format!("127.0.0.1:{}", args.port), &key)?;

    let urls: Vec<String> = (0..args.gateways)
        .map(|i| format!("http://127.0.0.1:{}", args.port + i))
        .collect();
    let env = format!(
        "STOA_GATEWAY_URL={base}\nSTOA_GATEWAY_H3_URL={h3}\nSTOA_CA_CERT={ca}\nSTOA_API_KEY={key}\n\
         STOA_GATEWAY_URLS={}\nSTOA_ADMIN_GRPC_URL={admin_url}\nSTOA_ADMIN_HTTP_URL={admin_url}\nSTOA_ADMIN_TOKEN={admin_token}\n",
        urls.join(" ")
    );
    std::fs::write(demo.join("demo.env"), &env)?;
    println!(
        "\nSTOA demo is running: a control plane, {} gateway(s) fed by it, the reference upstream.\n\
         \n  MCP endpoint (every granted upstream): {base}/mcp\
         \n  one upstream:                           {base}/mcp/reference\
         \n  TLS (h1/h2) and HTTP/3:                 {h3}/mcp   (trust {ca})\
         \n  all gateways:                           {}\
         \n  admin API (gRPC + HTTP/JSON):           {admin_url}   store: {database_url}\
         \n  admin token:                            {admin_token}\
         \n  API key (shown once):                   {key}\
         \n  upstreams:                              {}\
         \n\nA real tool call just went through the gateway:\n  tools/call reference__echo -> {answer}\n\
         \nVariables for scripts: target/demo/demo.env. Logs: target/demo/*.log.\n\
         \nTry it:\n  set -a; . target/demo/demo.env; set +a\
         \n  {ctl} gateways\
         \n  {ctl} get tools\
         \n  curl -s $STOA_ADMIN_HTTP_URL/v1/admin/ListResources -H \"authorization: Bearer $STOA_ADMIN_TOKEN\" -d '{{\"kind\":\"KIND_SUBSCRIPTION\"}}'\
         \n  curl -s {base}/mcp -H \"Authorization: Bearer $STOA_API_KEY\" -H 'Content-Type: application/json' \\\n    -H 'Accept: application/json, text/event-stream' \\\n    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{{\"protocolVersion\":\"2025-11-25\",\"capabilities\":{{}},\"clientInfo\":{{\"name\":\"curl\",\"version\":\"0\"}}}}}}' -i\n",
        args.gateways,
        urls.join(" "),
        upstreams
            .iter()
            .map(|(n, u)| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(" "),
        ctl = bin.join("stoactl").display(),
    );
    if args.once {
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        children.check()?;
    }
}

/// Starts `stoa-reference` on a free port; returns it and its MCP URL.
pub fn start_reference(bin: &Path, stderr: Stdio) -> anyhow::Result<(Child, String)> {
    let mut reference = Command::new(bin.join("stoa-reference"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("starting stoa-reference")?;
    let mut line = String::new();
    BufReader::new(reference.stdout.take().context("reference stdout")?).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http"))
        .with_context(|| format!("stoa-reference said {line:?}"))?
        .to_owned();
    Ok((reference, url))
}

/// Builds the platform's binaries (debug, or release for the bench) and
/// returns the folder they are in.
pub fn build_binaries(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    cmd.args([
        "-p",
        "stoa-gateway",
        "-p",
        "stoa-loadtest",
        "-p",
        "stoa-control",
    ]);
    sh(&mut cmd)?;
    Ok(target_dir().join(if release { "release" } else { "debug" }))
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

fn gateway_yaml(args: &Args, demo: &Path, i: u16) -> String {
    format!(
        "# Written by `cargo xtask demo`.\nlisteners:\n  plain: 127.0.0.1:{}\n  tls: {{addr: 127.0.0.1:{}, dev_cert_dir: {:?}}}\n\
         control_plane:\n  url: http://127.0.0.1:{}\n  gateway_id: demo-gateway-{i}\n  cache_file: {:?}\n",
        args.port + i,
        args.tls_port + i,
        demo.join("tls"),
        args.xds_port,
        demo.join(format!("gateway-{i}.cache")),
    )
}

fn wait_ready(ready: &Path, children: &mut Children, what: &str) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(ready) {
            return Ok(s);
        }
        children.check()?;
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{what} did not start; see target/demo/{what}.log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the gateway serves at least `revision` (its
/// `stoa_config_revision` metric).
fn wait_configured(addr: &str, revision: u64, children: &mut Children) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let ok = TcpStream::connect(addr)
            .and_then(|mut s| {
                write!(
                    s,
                    "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out
                    .lines()
                    .find_map(|l| l.strip_prefix("stoa_config_revision "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v as u64 >= revision))
            })
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        children.check()?;
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the gateway at {addr} got no config from the control plane; see target/demo/*.log"
            );
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
