//! `stoa-load`: an MCP `tools/call` load generator over HTTP/1.1, h2c, h2
//! (TLS) and HTTP/3, with latencies in HDR histograms.
//!
//! - `--rate R`: open loop. Request i is due at `start + i/R` whether or not
//!   earlier ones have finished, and its latency counts from that due time,
//!   so a stall shows up in the tail instead of hiding (no coordinated
//!   omission). A thread paces the requests; how late it released them is
//!   reported on its own (`lag_p99_us`), as it is the generator's share.
//!   Over cleartext HTTP/1.1 the open loop takes a lean path of its own
//!   (`lean.rs`: one thread, a timerfd pacer, hand-read answers), so the
//!   generator's CPU does not crowd the system it measures.
//! - no `--rate`: closed loop with `--concurrency` workers, for saturation.
//!
//! Prints one JSON object: achieved rate, errors and latency percentiles (µs),
//! the warm-up's successful calls and the generator's own CPU time while
//! measuring (`cpu_us`, Linux), so a benchmark can see what the generator
//! took from a machine it shares.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes};
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::sync::Mutex;

mod lean;

#[derive(Parser, Clone)]
struct Args {
    /// MCP endpoint, e.g. http://127.0.0.1:8080/mcp/reference.
    #[arg(long)]
    url: String,
    /// 1 (HTTP/1.1), 2 (h2c or h2 over TLS) or 3 (HTTP/3).
    #[arg(long, default_value_t = 1)]
    http: u8,
    /// Requests per second (open loop). Absent: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed-loop workers, or the most requests in flight in open loop.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// `Authorization: Bearer` value, if the endpoint needs one.
    #[arg(long)]
    key: Option<String>,
    /// CA certificate to trust for https:// URLs.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Open loop over cleartext HTTP/1.1 through hyper's pooled client, the
    /// general path, instead of the lean one (to compare the two).
    #[arg(long)]
    general: bool,
    /// The tool to call with `{"message": "ping"}`.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Speak 2026-07-28 (no session: every call carries its revision,
    /// `_meta` and mirrored `Mcp-Method`/`Mcp-Name`) instead of opening a
    /// 2025-11-25 session.
    #[arg(long)]
    stateless: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(Duration::from_secs_f64(match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        _ => return Err(format!("bad duration {s:?}")),
    }))
}

/// One way to send a request and read the whole answer.
#[derive(Clone)]
enum Transport {
    Hyper(
        Box<
            Client<
                hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
                Full<Bytes>,
            >,
        >,
    ),
    /// The endpoint is kept to close the connection at the end: a QUIC
    /// peer is not told when a process exits, and the gateway would keep
    /// the connection until its idle timeout.
    H3(
        Arc<Mutex<h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>>>,
        quinn::Endpoint,
    ),
}

impl Transport {
    async fn new(a: &Args) -> anyhow::Result<Transport> {
        // hyper-rustls sets ALPN itself; QUIC needs h3 named here.
        let tls = tls_config(a.ca.as_deref(), (a.http == 3).then_some(b"h3".as_slice()))?;
        if a.http == 3 {
            return h3_connect(&a.url, tls)
                .await
                .map(|(s, e)| Transport::H3(Arc::new(Mutex::new(s)), e));
        }
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let conn = if a.http == 2 {
            b.enable_http2().wrap_connector(http)
        } else {
            b.enable_http1().wrap_connector(http)
        };
        let mut cb = Client::builder(TokioExecutor::new());
        cb.http2_only(a.http == 2)
            .pool_max_idle_per_host(a.concurrency.max(1) * 2);
        Ok(Transport::Hyper(Box::new(cb.build(conn))))
    }

    async fn post(
        &self,
        url: &Uri,
        headers: &[(String, String)],
        body: Bytes,
    ) -> anyhow::Result<(u16, Option<String>, Bytes)> {
        let mut req = Request::builder().method("POST").uri(url.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match self {
            Transport::Hyper(c) => {
                let resp = c.request(req.body(Full::new(body))?).await?;
                let session = resp
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let status = resp.status().as_u16();
                let bytes = resp.into_body().collect().await?.to_bytes();
                Ok((status, session, bytes))
            }
            Transport::H3(send, _) => {
                let mut stream = send.lock().await.send_request(req.body(())?).await?;
                stream.send_data(body).await?;
                stream.finish().await?;
                let resp = stream.recv_response().await?;
                let session = resp
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let mut out = Vec::new();
                while let Some(mut chunk) = stream.recv_data().await? {
                    out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                }
                Ok((resp.status().as_u16(), session, Bytes::from(out)))
            }
        }
    }
}

fn tls_config(
    ca: Option<&std::path::Path>,
    alpn: Option<&[u8]>,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in CertificateDer::pem_file_iter(ca).context("CA file")? {
            roots.add(c?)?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    Ok(cfg)
}

async fn h3_connect(
    url: &str,
    tls: rustls::ClientConfig,
) -> anyhow::Result<(
    h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    quinn::Endpoint,
)> {
    let uri: Uri = url.parse()?;
    let host = uri.host().context("host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("resolve")?;
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let server_name = if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost"
    } else {
        host.as_str()
    };
    let conn = endpoint.connect(addr, server_name)?.await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((send, endpoint))
}

fn base_headers(a: &Args) -> Vec<(String, String)> {
    let mut h = vec![
        ("content-type".into(), "application/json".into()),
        (
            "accept".into(),
            "application/json, text/event-stream".into(),
        ),
    ];
    if let Some(k) = &a.key {
        h.push(("authorization".into(), format!("Bearer {k}")));
    }
    h
}

/// Opens an MCP session; returns the headers every call carries.
async fn open_session(t: &Transport, a: &Args, url: &Uri) -> anyhow::Result<Vec<(String, String)>> {
    let mut h = base_headers(a);
    if a.stateless {
        h.push(("mcp-protocol-version".into(), "2026-07-28".into()));
        h.push(("mcp-method".into(), "tools/call".into()));
        h.push(("mcp-name".into(), a.tool.clone()));
        return Ok(h);
    }
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"stoa-load","version":"0"}}}"#;
    let (status, session, body) = t.post(url, &h, Bytes::from_static(init.as_bytes())).await?;
    if status != 200 {
        bail!(
            "initialize answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    h.push(("mcp-protocol-version".into(), "2025-11-25".into()));
    if let Some(s) = session {
        h.push(("mcp-session-id".into(), s));
    }
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    t.post(url, &h, Bytes::from_static(note.as_bytes())).await?;
    Ok(h)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Open loop runs on one thread: a released request wakes no other
    // thread of the generator, whose CPU would otherwise crowd the two
    // cores it shares with the system under test (multi-threaded, the
    // generator spent about 3x more CPU per request in open loop than in
    // closed loop). Closed loop, which only has to saturate, keeps every core.
    let rt = if a.rate.is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let url: Uri = a.url.parse()?;
    let transport = Transport::new(&a).await?;
    let headers = Arc::new(open_session(&transport, &a, &url).await?);
    let meta = if a.stateless {
        r#","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#
    } else {
        ""
    };
    let body = Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}","arguments":{{"message":"ping"}}{meta}}}}}"#,
        a.tool
    ));
    let call = {
        let (url, body) = (url.clone(), body.clone());
        move |t: Transport, h: Arc<Vec<(String, String)>>| {
            let url = url.clone();
            let body = body.clone();
            async move {
                matches!(t.post(&url, &h, body).await,
                Ok((200, _, b)) if !b.is_empty() && !contains(&b, b"\"error\""))
            }
        }
    };
    // Warm up connections and caches; not recorded.
    let warm_until = Instant::now() + a.warmup;
    let mut warm_ok = 0u64;
    while Instant::now() < warm_until {
        warm_ok += u64::from(call(transport.clone(), headers.clone()).await);
    }

    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    // What each request task or worker holds a handle of.
    let shared = || {
        (
            transport.clone(),
            headers.clone(),
            hist.clone(),
            errors.clone(),
            done.clone(),
        )
    };
    let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    // Open loop over cleartext HTTP/1.1 takes the lean path (`lean.rs`).
    let fleet = match (a.rate, a.http, url.scheme_str()) {
        (Some(_), 1, Some("http")) if !a.general => {
            let request = raw_request(&url, &headers, &body)?;
            Some(lean::Fleet::connect(socket_addr(&url).await?, request, a.concurrency).await?)
        }
        _ => None,
    };
    let cpu_before = own_cpu_us();
    let start = Instant::now();
    match (a.rate, fleet) {
        (Some(rate), Some(fleet)) => {
            let total = (rate * a.duration.as_secs_f64()) as u64;
            let out = tokio::task::LocalSet::new()
                .run_until(fleet.run(rate, total, start))
                .await?;
            hist.lock().expect("histogram").add(&out.latency)?;
            lag = out.lag;
            done.fetch_add(out.ok, Ordering::Relaxed);
            errors.fetch_add(out.errors, Ordering::Relaxed);
        }
        (Some(rate), None) => {
            // Open loop: a pacing thread of its own releases each request
            // when it is due (thread sleeps are precise to tens of
            // microseconds; the runtime's timers tick in milliseconds, which
            // made bursts), and `concurrency` permits model the client's
            // connections. A request's latency counts from when it was due,
            // so the pacer's lateness and any wait for a permit count too;
            // the lateness is also reported on its own (`lag_p99_us`).
            let total = (rate * a.duration.as_secs_f64()) as u64;
            let permits = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
            let mut tasks = Vec::with_capacity(total as usize);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || {
                    for i in 0..total {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        if tx.send(due).is_err() {
                            return;
                        }
                    }
                })?;
            while let Some(due) = rx.recv().await {
                lag.record((due.elapsed().as_micros() as u64).max(1)).ok();
                let (t, h, hist, errors, done) = shared();
                let permits = permits.clone();
                let fut = call(t, h);
                tasks.push(tokio::spawn(async move {
                    let permit = permits.acquire_owned().await.expect("never closed");
                    let ok = fut.await;
                    let us = due.elapsed().as_micros() as u64;
                    drop(permit);
                    if ok {
                        hist.lock().expect("histogram").record(us.max(1)).ok();
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
        (None, _) => {
            let until = start + a.duration;
            let mut workers = Vec::new();
            for _ in 0..a.concurrency.max(1) {
                let (t, h, hist, errors, done) = shared();
                let call = call.clone();
                workers.push(tokio::spawn(async move {
                    let mut local =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                    while Instant::now() < until {
                        let sent = Instant::now();
                        if call(t.clone(), h.clone()).await {
                            local
                                .record((sent.elapsed().as_micros() as u64).max(1))
                                .ok();
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    hist.lock().expect("histogram").add(&local).ok();
                }));
            }
            for w in workers {
                w.await?;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_us = own_cpu_us()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    if let Transport::H3(_, endpoint) = &transport {
        endpoint.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    let h = hist.lock().expect("histogram");
    println!(
        "{}",
        serde_json::json!({
            "url": a.url, "http": a.http, "mode": if a.rate.is_some() { "open" } else { "closed" },
            "target_rate": a.rate, "concurrency": a.concurrency,
            "ok": done.load(Ordering::Relaxed), "errors": errors.load(Ordering::Relaxed),
            "rate": done.load(Ordering::Relaxed) as f64 / elapsed,
            "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
            "lag_p99_us": (a.rate.is_some()).then(|| lag.value_at_quantile(0.99)),
            "warmup_ok": warm_ok, "cpu_us": cpu_us,
        })
    );
    Ok(())
}

/// This process's CPU time (user + system) so far, in µs, from
/// `/proc/self/stat` (Linux only; its ticks are 1/100 s on every Linux).
fn own_cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) * 10_000)
}

/// A whole HTTP/1.1 request: head and body, as the lean path sends it.
fn raw_request(url: &Uri, headers: &[(String, String)], body: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::fmt::Write;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
        url.path_and_query().map_or("/", |p| p.as_str()),
        url.authority().context("the URL names no host")?,
        body.len()
    );
    for (k, v) in headers {
        write!(head, "{k}: {v}\r\n")?;
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Ok(out)
}

async fn socket_addr(url: &Uri) -> anyhow::Result<std::net::SocketAddr> {
    let host = url.host().context("the URL names no host")?;
    let port = url.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host} does not resolve"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
