//! Process lifecycle: open the store, make sure tokens exist, follow the
//! revision (NOTIFY from other replicas, plus a poll), serve the admin API
//! and the config stream, and stop cleanly on SIGTERM/SIGINT.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use serde::Serialize;
use stoa_proto::pb::{admin_server::AdminServer, discovery_server::DiscoveryServer};
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::AdminService,
    auth,
    discover::{DiscoverSettings, Discoverer},
    discovery::{DiscoveryService, StreamSettings},
    http,
    store::{Backend, NOTIFY_CHANNEL, Store},
};

pub struct Options {
    pub database_url: String,
    pub admin_listen: SocketAddr,
    pub xds_listen: SocketAddr,
    pub replica: Option<String>,
    pub admin_token: Option<String>,
    pub gateway_token: Option<String>,
    pub ready_file: Option<PathBuf>,
    /// How often the revision is read from the store, besides NOTIFY.
    pub poll_interval: Duration,
    pub discover: DiscoverSettings,
    pub stream: StreamSettings,
    pub max_request_bytes: usize,
}

/// What the process announces once it listens (`--ready-file`).
#[derive(Debug, Serialize)]
pub struct Bound {
    pub admin: SocketAddr,
    pub xds: SocketAddr,
    pub store_id: String,
    pub replica: String,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let store = Arc::new(
        Store::open(&opts.database_url)
            .await
            .with_context(|| "opening the store")?,
    );
    for (role, given) in [
        (auth::ADMIN, opts.admin_token.as_deref()),
        (auth::GATEWAY, opts.gateway_token.as_deref()),
    ] {
        if let Some(t) = auth::bootstrap(&store, role, given).await? {
            // Printed once, to the terminal only: the store keeps a hash.
            println!("stoa-control: made the first {role} token (shown once, keep it): {t}");
        }
    }

    let admin_l = TcpListener::bind(opts.admin_listen)
        .await
        .with_context(|| format!("binding {}", opts.admin_listen))?;
    let xds_l = TcpListener::bind(opts.xds_listen)
        .await
        .with_context(|| format!("binding {}", opts.xds_listen))?;
    let bound_admin = admin_l.local_addr()?;
    let bound_xds = xds_l.local_addr()?;
    let replica = opts.replica.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "localhost".into());
        format!("{}:{}", host.trim(), bound_xds.port())
    });
    store.disconnect_gateways_of(&replica).await?;

    let stop = CancellationToken::new();
    tokio::spawn(follow_revision(
        store.clone(),
        opts.poll_interval,
        stop.clone(),
    ));

    let discoverer = Discoverer::new(store.clone(), opts.discover.clone());
    tokio::spawn(discoverer.clone().run_periodically());
    let admin = Arc::new(AdminService {
        store: store.clone(),
        replica: replica.clone(),
        discoverer,
    });
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(stoa_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
    };
    let reflection_alpha = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(stoa_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
    };
    let admin_routes =
        tonic::service::Routes::from(http::router(admin.clone(), opts.max_request_bytes))
            .add_service(
                AdminServer::from_arc(admin).max_decoding_message_size(opts.max_request_bytes),
            )
            .add_service(reflection()?);
    let xds_routes = tonic::service::Routes::new(DiscoveryServer::new(DiscoveryService {
        store: store.clone(),
        replica: replica.clone(),
        settings: opts.stream.clone(),
    }))
    .add_service(reflection()?)
    .add_service(reflection_alpha()?);

    let admin_server = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_routes(admin_routes)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(admin_l),
            stop.clone().cancelled_owned(),
        );
    // Dead gateways are noticed by HTTP/2 pings, not only by TCP.
    let xds_server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(xds_routes)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(xds_l),
            stop.clone().cancelled_owned(),
        );

    let bound = Bound {
        admin: bound_admin,
        xds: bound_xds,
        store_id: store.store_id().to_owned(),
        replica,
    };
    let announce = serde_json::to_string(&bound)?;
    tracing::info!(listening = %announce, backend = ?store.backend(), revision = *store.head().borrow(), "stoa-control ready");
    if let Some(path) = &opts.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &announce)?;
        std::fs::rename(&tmp, path)?;
    }

    let signals = async {
        let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    };
    let stopper = stop.clone();
    tokio::spawn(async move {
        let _ = signals.await;
        tracing::info!("stopping");
        stopper.cancel();
    });
    let (a, x) = tokio::join!(admin_server, xds_server);
    a.context("admin listener")?;
    x.context("config stream listener")?;
    store.disconnect_gateways_of(&bound.replica).await.ok();
    Ok(())
}

/// Keeps the store's head current: NOTIFY from any replica on Postgres, and
/// a poll as the safety net (a listener reconnect can miss notifications).
async fn follow_revision(store: Arc<Store>, every: Duration, stop: CancellationToken) {
    if store.backend() == Backend::Postgres {
        let s = store.clone();
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                let listened = async {
                    let mut l = sqlx::postgres::PgListener::connect(s.url()).await?;
                    l.listen(NOTIFY_CHANNEL).await?;
                    loop {
                        let n = l.recv().await?;
                        if let Ok(rev) = n.payload().parse::<u64>() {
                            s.observe(rev);
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    r = listened => if let Err(e) = r {
                        tracing::warn!("LISTEN {NOTIFY_CHANNEL}: {e}; retrying");
                    },
                    _ = stop2.cancelled() => return,
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match store.revision().await {
            Ok(r) => store.observe(r),
            Err(e) => tracing::warn!("reading the revision: {e}"),
        }
    }
}
