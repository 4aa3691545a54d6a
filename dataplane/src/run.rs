//! Process lifecycle: bind the listeners, announce them, reload config and
//! certificates on change or SIGHUP, and drain on SIGTERM/SIGINT.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::Context as _;
use http::HeaderValue;
use serde::Serialize;
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::FileConfig,
    gateway::{Gateway, Listener, Runtime},
    listen::{self, Serve},
    tls::{self, CertFiles, Resolver},
};

/// Where the gateway actually listens (ports may have been 0 in config).
#[derive(Debug, Default, Serialize)]
pub struct Bound {
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub h3: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The development CA clients should trust, when one was generated.
    pub ca: Option<PathBuf>,
}

pub struct Options {
    pub config: PathBuf,
    /// Written (JSON `Bound`) once every listener is bound.
    pub ready_file: Option<PathBuf>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let env = |n: &str| std::env::var(n).ok();
    let cfg = FileConfig::load(&opts.config)?;
    let (rt, rejected) = Runtime::from_config(&cfg, &env, None).map_err(anyhow::Error::msg)?;
    for r in &rejected {
        tracing::error!("{r}");
    }
    let upstream_roots = match &cfg.upstream_ca_file {
        None => Vec::new(),
        Some(path) => tls::read_certs(path).context("upstream_ca_file")?,
    };
    let gw = Gateway::new(rt, &upstream_roots);
    gw.metrics.config_rejected.set(rejected.len() as i64);
    let stop_stream = CancellationToken::new();
    if let Some(cp) = &cfg.control_plane {
        let token = env("STOA_GATEWAY_TOKEN")
            .or_else(|| {
                cp.token
                    .as_deref()
                    .map(|t| crate::model::expand_env(t, &env))
                    .transpose()
                    .ok()
                    .flatten()
            })
            .context(
                "control_plane: no gateway token (set control_plane.token or STOA_GATEWAY_TOKEN)",
            )?;
        let id = env("STOA_GATEWAY_ID")
            .or_else(|| cp.gateway_id.clone())
            .unwrap_or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "gateway".into())
            });
        tracing::info!(url = %cp.url, gateway_id = %id, "taking config from the control plane");
        let client = crate::xds::Client::new(gw.clone(), cp.clone(), token, id);
        client
            .spawn(stop_stream.clone())
            .context("starting the config-stream thread")?;
    }

    // `listeners.workers` is 1 to 256 when given (the config refuses others).
    let workers = cfg
        .listeners
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(crate::config::MAX_WORKERS);
    let serve = Serve {
        gw: gw.clone(),
        limits: cfg.limits.clone(),
        tracker: TaskTracker::new(),
        drain: Arc::default(),
        workers: Arc::new(listen::Workers::start(workers).context("starting worker threads")?),
    };
    let mut bound = Bound::default();
    let mut cert_watch: Option<(Arc<Resolver>, CertFiles)> = None;

    if let Some(addr) = cfg.listeners.plain {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        bound.plain = Some(l.local_addr()?);
        serve
            .tracker
            .spawn(listen::serve_tcp(serve.clone(), l, None, Listener::Public));
    }
    if let Some(t) = &cfg.listeners.tls {
        let mut files = match (&t.cert, &t.key) {
            (Some(c), Some(k)) => CertFiles::given(c.clone(), k.clone()),
            (None, None) => CertFiles::development(&t.dev_cert_dir)?,
            _ => anyhow::bail!("listeners.tls: `cert` and `key` go together"),
        };
        let resolver = Resolver::load(&mut files)?;
        let (tcp_tls, quic_tls) = tls::server_configs(resolver.clone());
        let l = TcpListener::bind(t.addr)
            .await
            .with_context(|| format!("binding {}", t.addr))?;
        let addr = l.local_addr()?;
        bound.tls = Some(addr);
        let alt_svc = if t.http3 {
            let quic = listen::quic_server_config(quic_tls, &cfg.limits)?;
            bound.h3 = Some(
                listen::serve_h3_on_workers(&serve, addr, quic)
                    .with_context(|| format!("binding QUIC on udp {addr}"))?,
            );
            Some(HeaderValue::from_str(&format!(
                "h3=\":{}\"; ma=86400",
                addr.port()
            ))?)
        } else {
            None
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tcp_tls);
        serve.tracker.spawn(listen::serve_tcp(
            serve.clone(),
            l,
            Some((acceptor, alt_svc)),
            Listener::Public,
        ));
        if let Some(ca) = &files.dev_ca {
            let ca = std::fs::canonicalize(ca).unwrap_or(ca.clone());
            tracing::info!(ca = %ca.display(), "serving a development certificate; clients should trust this CA");
            bound.ca = Some(ca);
        }
        cert_watch = Some((resolver, files));
    }
    if let Some(addr) = cfg.listeners.admin {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        bound.admin = Some(l.local_addr()?);
        serve
            .tracker
            .spawn(listen::serve_tcp(serve.clone(), l, None, Listener::Admin));
    }
    if bound.plain.is_none() && bound.tls.is_none() {
        anyhow::bail!("no listener configured: set listeners.plain and/or listeners.tls");
    }
    let announce = serde_json::to_string(&bound)?;
    tracing::info!(listening = %announce, workers = serve.workers.len(), "stoa-gateway ready");
    if let Some(path) = &opts.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &announce)?;
        std::fs::rename(&tmp, path)?;
    }

    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(cfg.watch_interval);
    let mut stamp = mtime(&opts.config);
    let mut running = cfg;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&gw, &opts.config, &mut running, &mut stamp, "sighup"),
            _ = tick.tick() => {
                if mtime(&opts.config) != stamp {
                    reload(&gw, &opts.config, &mut running, &mut stamp, "file");
                }
                if let Some((resolver, files)) = &mut cert_watch {
                    match resolver.reload_if_changed(files) {
                        Ok(true) => tracing::info!("TLS certificate reloaded"),
                        Ok(false) => {}
                        Err(e) => tracing::error!("TLS certificate not reloaded, keeping the current one: {e}"),
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    let drain_timeout = gw.runtime().limits.drain_timeout;
    tracing::info!(timeout = ?drain_timeout, "draining: no new connections, in-flight requests finish, streams end");
    gw.set_ready(false);
    stop_stream.cancel();
    gw.draining.cancel();
    serve.drain.start();
    serve.tracker.close();
    if tokio::time::timeout(drain_timeout, serve.tracker.wait())
        .await
        .is_ok()
    {
        tracing::info!("drained");
    } else {
        tracing::warn!(
            left = serve.tracker.len(),
            "drain timeout reached; closing what is left"
        );
    }
    Ok(())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Loads the file again and swaps it in whole, or keeps the running config.
fn reload(
    gw: &Gateway,
    path: &Path,
    running: &mut FileConfig,
    stamp: &mut Option<SystemTime>,
    why: &str,
) {
    *stamp = mtime(path);
    let env = |n: &str| std::env::var(n).ok();
    let current = gw.runtime();
    let loaded = FileConfig::load(path)
        .map_err(|e| e.to_string())
        .and_then(|cfg| Runtime::from_config(&cfg, &env, Some(&current)).map(|built| (cfg, built)));
    drop(current);
    let (cfg, (rt, rejected)) = match loaded {
        Ok(x) => x,
        Err(e) => {
            gw.metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            tracing::error!(
                trigger = why,
                "config not reloaded, keeping the running one: {e}"
            );
            return;
        }
    };
    for r in &rejected {
        tracing::error!("{r}");
    }
    if format!("{:?}", cfg.listeners) != format!("{:?}", running.listeners)
        || format!("{:?}", cfg.control_plane) != format!("{:?}", running.control_plane)
        || cfg.upstream_ca_file != running.upstream_ca_file
    {
        tracing::warn!(
            "listener, control_plane and upstream_ca_file changes take effect at the next restart"
        );
    }
    if cfg.control_plane.is_some() {
        gw.reload_keeping_snapshot(rt);
    } else {
        gw.swap(rt);
    }
    gw.metrics.config_rejected.set(rejected.len() as i64);
    gw.metrics.config_reloads.with_label_values(&["ok"]).inc();
    tracing::info!(trigger = why, rejected = rejected.len(), "config reloaded");
    *running = cfg;
}
