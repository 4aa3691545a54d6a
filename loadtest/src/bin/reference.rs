//! `stoa-reference`: the reference MCP upstream as a standalone process.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use stoa_loadtest::reference::{self, Options};

/// Reference MCP server (Streamable HTTP at /mcp) for tests, demos and benchmarks.
#[derive(Parser)]
#[command(name = "stoa-reference")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Answer `initialize` with this protocol version instead of negotiating.
    #[arg(long)]
    force_version: Option<String>,
    /// Speak only 2026-07-28 (no `initialize`, no sessions), as a modern-only server.
    #[arg(long)]
    stateless_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "stoa-reference listening on http://{addr}/mcp")?;
    out.flush()?;
    drop(out);
    reference::serve(
        listener,
        Options {
            force_version: args.force_version,
            stateless_only: args.stateless_only,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}
