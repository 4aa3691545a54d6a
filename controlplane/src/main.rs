//! `stoa-control`: the control plane. See `stoa-control --help`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use stoa_control::{discover::DiscoverSettings, discovery::StreamSettings, run, seed};

/// STOA control plane: the store, the admin API (gRPC + HTTP/JSON) and the
/// config stream to gateways.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// `sqlite://PATH` (embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "STOA_DATABASE_URL",
        default_value = "sqlite://stoa-control.db"
    )]
    database_url: String,
    /// Admin API: gRPC (with reflection) and HTTP/JSON on one port.
    #[arg(long, env = "STOA_ADMIN_LISTEN", default_value = "127.0.0.1:7070")]
    admin_listen: SocketAddr,
    /// Config stream for gateways (gRPC).
    #[arg(long, env = "STOA_XDS_LISTEN", default_value = "127.0.0.1:7071")]
    xds_listen: SocketAddr,
    /// This replica's name in the gateways table (default: hostname:xds-port).
    #[arg(long, env = "STOA_REPLICA")]
    replica: Option<String>,
    /// An admin token to accept (stored hashed). Without one, and with none
    /// stored, a token is made and printed once.
    #[arg(long, env = "STOA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A gateway token to accept (stored hashed); same rule.
    #[arg(long, env = "STOA_GATEWAY_TOKEN", hide_env_values = true)]
    gateway_token: Option<String>,
    /// Written (JSON: admin, xds, store_id, replica) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// How often the revision is polled besides LISTEN/NOTIFY.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How often each upstream's tool catalog is refreshed (0s: never).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    catalog_refresh: Duration,
    /// Largest admin request accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_request_bytes: usize,
    /// Largest config-stream message sent, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_chunk_bytes: usize,
    /// `text` or `json`.
    #[arg(long, env = "STOA_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Without a command: serve.
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the admin API and the config stream (the default).
    Serve,
    /// Bulk-create API keys straight in the store (benchmarks, imports):
    /// makes the tenant, upstream and subscription they use if missing, and
    /// writes the plain keys, one per line, to `--out`.
    SeedKeys(seed::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    if let Some(Cmd::SeedKeys(args)) = cli.cmd {
        return seed::run(&cli.database_url, args).await;
    }
    run::run(run::Options {
        database_url: cli.database_url,
        admin_listen: cli.admin_listen,
        xds_listen: cli.xds_listen,
        replica: cli.replica,
        admin_token: cli.admin_token,
        gateway_token: cli.gateway_token,
        ready_file: cli.ready_file,
        poll_interval: cli.poll_interval,
        discover: DiscoverSettings {
            refresh_interval: cli.catalog_refresh,
            ..Default::default()
        },
        stream: StreamSettings {
            max_chunk_bytes: cli.max_chunk_bytes,
        },
        max_request_bytes: cli.max_request_bytes,
    })
    .await
}
