//! `cargo xtask bench --suite propagation`: how config moves from the control
//! plane to a fleet of gateways. N gateways, K API keys in the store:
//! initial sync time and bytes, time from a key revocation to refusal on
//! every gateway (repeated trials), bytes of a one-key change, gateway RSS.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::procs::Procs;

#[derive(clap::Args, Clone)]
pub struct PropagationArgs {
    /// Gateways fed by the control plane.
    #[arg(long, default_value_t = 8)]
    pub gateways: usize,
    /// API keys in the store.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Revocations measured.
    #[arg(long, default_value_t = 50)]
    pub trials: usize,
    /// The store (default: a fresh SQLite file under target/bench).
    #[arg(long)]
    pub database_url: Option<String>,
}

const ADMIN: &str = "bench-admin-token";
const GATEWAY: &str = "bench-gateway-token";

pub fn run(bin: &Path, dir: &Path, args: &PropagationArgs) -> anyhow::Result<()> {
    let dir = dir.join("propagation");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut procs = Procs(Vec::new());

    let (reference, upstream) = crate::demo::start_reference(bin, Stdio::null())?;
    procs.0.push(reference);

    let db = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("store.db").display()));
    let keys_file = dir.join("keys.txt");
    let seeded = Instant::now();
    let status = Command::new(bin.join("stoa-control"))
        .args([
            "--database-url",
            &db,
            "seed-keys",
            "--count",
            &args.keys.to_string(),
        ])
        .args(["--upstream-url", &upstream, "--out"])
        .arg(&keys_file)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("seeding {} keys failed", args.keys);
    }
    let seed_time = seeded.elapsed();
    let keys: Vec<String> = std::fs::read_to_string(&keys_file)?
        .lines()
        .map(str::to_owned)
        .collect();
    if keys.len() < args.trials + 1 {
        bail!("--keys must exceed --trials");
    }

    let ready = dir.join("control.json");
    procs.0.push(
        Command::new(bin.join("stoa-control"))
            .args(["--database-url", &db])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--xds-listen",
                "127.0.0.1:0",
            ])
            .args(["--catalog-refresh", "0s"])
            .arg("--ready-file")
            .arg(&ready)
            .env("STOA_ADMIN_TOKEN", ADMIN)
            .env("STOA_GATEWAY_TOKEN", GATEWAY)
            .env("STOA_LOG", "warn")
            .stderr(std::fs::File::create(dir.join("control.log"))?)
            .spawn()?,
    );
    let cp = crate::bench::wait_file(&ready)?;
    let field = |k: &str| -> anyhow::Result<SocketAddr> {
        Ok(cp
            .split(&format!("\"{k}\":\""))
            .nth(1)
            .and_then(|t| t.split('"').next())
            .with_context(|| format!("{k} in {cp}"))?
            .parse()?)
    };
    let (admin, xds) = (field("admin")?, field("xds")?);

    // An idle gateway with nothing configured, for scale.
    let idle_cfg = dir.join("idle.yaml");
    std::fs::write(&idle_cfg, "listeners: {plain: 127.0.0.1:0}\n")?;
    let (idle, _) = start_gateway(bin, &idle_cfg, &dir.join("idle"), &mut procs)?;
    let idle_rss = rss_kib(procs.0[idle].id())?;

    // The fleet, started together.
    let started = Instant::now();
    let mut fleet = Vec::new();
    for i in 0..args.gateways {
        let cfg = dir.join(format!("gw-{i}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "listeners: {{plain: 127.0.0.1:0}}\ncontrol_plane:\n  url: http://{xds}\n  gateway_id: bench-{i}\n  cache_file: {:?}\n",
                dir.join(format!("gw-{i}.cache"))
            ),
        )?;
        let (idx, addr) = start_gateway(bin, &cfg, &dir.join(format!("gw-{i}")), &mut procs)?;
        fleet.push((idx, addr));
    }
    let mut sync = Vec::new();
    for (_, addr) in &fleet {
        wait_until(Duration::from_secs(300), || get(*addr, "/readyz").0 == 200)
            .with_context(|| format!("gateway {addr} never got its snapshot"))?;
        sync.push(started.elapsed());
    }
    let sync_bytes: Vec<u64> = fleet
        .iter()
        .map(|(_, a)| config_bytes(*a))
        .collect::<anyhow::Result<_>>()?;
    let rss: Vec<u64> = fleet
        .iter()
        .map(|(i, _)| rss_kib(procs.0[*i].id()))
        .collect::<anyhow::Result<_>>()?;

    // One-key changes: bytes per gateway.
    let before: u64 = total_bytes(&fleet)?;
    let made = admin_call(
        admin,
        "CreateApiKey",
        r#"{"tenant":"bench","displayName":"probe","subscriptions":["bench"]}"#,
    )?;
    let new_key = made
        .split("\"key\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .context("CreateApiKey answer")?
        .to_owned();
    for (_, a) in &fleet {
        wait_until(Duration::from_secs(10), || call(*a, &new_key) == 200)?;
    }
    let create_bytes = (total_bytes(&fleet)? - before) as f64 / fleet.len() as f64;

    let mut revoke_ms = Vec::new();
    let mut commit_ms = Vec::new();
    let mut revoke_bytes = Vec::new();
    for key in keys.iter().take(args.trials) {
        for (_, a) in &fleet {
            let s = call(*a, key);
            if s != 200 {
                bail!("key not accepted before its revocation: {s}");
            }
        }
        let before = total_bytes(&fleet)?;
        let prefix = key.split('_').nth(1).context("key format")?.to_owned();
        let t0 = Instant::now();
        admin_call(
            admin,
            "RevokeApiKey",
            &format!("{{\"prefix\":\"{prefix}\"}}"),
        )?;
        commit_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let handles: Vec<_> = fleet
            .iter()
            .map(|(_, a)| {
                let (a, key) = (*a, key.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if call(a, &key) == 401 {
                            return Some(Instant::now());
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    None
                })
            })
            .collect();
        let mut last = t0;
        for h in handles {
            let at = h
                .join()
                .ok()
                .flatten()
                .context("a gateway never refused the revoked key")?;
            last = last.max(at);
        }
        revoke_ms.push((last - t0).as_secs_f64() * 1e3);
        // Let the ACKs land before counting bytes.
        std::thread::sleep(Duration::from_millis(20));
        revoke_bytes.push((total_bytes(&fleet)? - before) as f64 / fleet.len() as f64);
    }

    let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    };
    let mut sync_ms: Vec<f64> = sync.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!(
        "\nSTOA bench: config propagation, {} gateways, {} API keys (store: {}, seeded in {:.1?})\n",
        args.gateways,
        args.keys,
        if args.database_url.is_some() {
            "given"
        } else {
            "SQLite"
        },
        seed_time
    );
    println!(
        "  initial sync (start to ready, all started together): p50 {:.0} ms, last {:.0} ms",
        pct(&mut sync_ms, 0.5),
        pct(&mut sync_ms, 1.0)
    );
    println!(
        "  initial sync bytes per gateway: {} ({:.1} MiB, {:.0} B per key)",
        sync_bytes[0],
        sync_bytes[0] as f64 / (1 << 20) as f64,
        sync_bytes[0] as f64 / args.keys as f64
    );
    println!(
        "  revocation to refusal on all {} gateways ({} trials): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (admin RPC incl. commit: p50 {:.1} ms)",
        args.gateways,
        revoke_ms.len(),
        pct(&mut revoke_ms, 0.5),
        pct(&mut revoke_ms, 0.99),
        pct(&mut revoke_ms, 1.0),
        pct(&mut commit_ms, 0.5)
    );
    println!(
        "  bytes per gateway for a one-key change: create {:.0} B, revoke {:.0} B (p50 over trials)",
        create_bytes,
        pct(&mut revoke_bytes, 0.5)
    );
    // Memory once the sync's garbage has been returned (the trials took a
    // while), and the peak (VmHWM) the initial sync reached.
    std::thread::sleep(Duration::from_secs(3));
    let settled: Vec<u64> = fleet
        .iter()
        .map(|(i, _)| rss_kib(procs.0[*i].id()))
        .collect::<anyhow::Result<_>>()?;
    let peak: Vec<u64> = fleet
        .iter()
        .map(|(i, _)| status_kib(procs.0[*i].id(), "VmHWM:"))
        .collect::<anyhow::Result<_>>()?;
    let mib = |v: &[u64]| *v.iter().max().unwrap_or(&0) as f64 / 1024.0;
    println!(
        "  gateway RSS with {} keys (max over the fleet): {:.1} MiB settled, {:.1} MiB right after the sync, {:.1} MiB peak (VmHWM); an idle gateway with no config: {:.1} MiB",
        args.keys,
        mib(&settled),
        mib(&rss),
        mib(&peak),
        idle_rss as f64 / 1024.0
    );
    Ok(())
}

fn start_gateway(
    bin: &Path,
    cfg: &Path,
    base: &Path,
    procs: &mut Procs,
) -> anyhow::Result<(usize, SocketAddr)> {
    let ready = base.with_extension("ready.json");
    let child = Command::new(bin.join("stoa-gateway"))
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--ready-file")
        .arg(&ready)
        .env("STOA_GATEWAY_TOKEN", GATEWAY)
        .env("STOA_LOG", "warn")
        .stderr(std::fs::File::create(base.with_extension("log"))?)
        .spawn()?;
    procs.0.push(child);
    let bound = crate::bench::wait_file(&ready)?;
    let addr = bound
        .split("\"plain\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .context("plain address")?
        .parse()?;
    Ok((procs.0.len() - 1, addr))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One HTTP/1.1 exchange: status and body.
fn exchange(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let go = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{head}Host: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    go().unwrap_or((0, String::new()))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(addr, &format!("GET {path} HTTP/1.1\r\n"), "")
}

fn call(addr: SocketAddr, key: &str) -> u16 {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    exchange(
        addr,
        &format!(
            "POST /mcp/ref HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n\
             Mcp-Method: tools/call\r\nMcp-Name: echo\r\n"
        ),
        body,
    )
    .0
}

fn admin_call(admin: SocketAddr, method: &str, body: &str) -> anyhow::Result<String> {
    let (status, answer) = exchange(
        admin,
        &format!(
            "POST /v1/admin/{method} HTTP/1.1\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
        ),
        body,
    );
    if status != 200 {
        bail!("{method} answered {status}: {answer}");
    }
    Ok(answer)
}

fn config_bytes(addr: SocketAddr) -> anyhow::Result<u64> {
    let (_, m) = get(addr, "/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix("stoa_config_stream_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("stoa_config_stream_bytes_total in /metrics")
}

fn total_bytes(fleet: &[(usize, SocketAddr)]) -> anyhow::Result<u64> {
    fleet.iter().map(|(_, a)| config_bytes(*a)).sum()
}
