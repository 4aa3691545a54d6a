//! The reference MCP upstream: a small, fast Streamable HTTP server that passes the
//! official conformance suite's server scenarios for 2025-06-18, 2025-11-25 and
//! 2026-07-28 on a single `/mcp` endpoint.
//!
//! Code map:
//! - `http`: the hyper service — routing, Host/Origin checks, body limits, era dispatch.
//! - `legacy`: the stateful 2025 wire (initialize, sessions, GET/DELETE).
//! - `stateless`: the 2026-07-28 wire (`_meta`, header mirroring, `server/discover`).
//! - `mirror`: pure decoding/validation of mirrored `Mcp-*` headers.
//! - `session`: per-session state, SSE stream logs for resumption, server→client requests.
//! - `sse`: the SSE body and the sink tools write events into.
//! - `tools`, `resources`, `prompts`: the catalogue; `mrtr`: tools that need client input;
//!   `streaming`: tools that emit notifications; `seal`: integrity-protected requestState.
//! - `listen`: change notifications (`subscriptions/listen`, the `test_trigger_*` tools).
//! - `lists`: list results pre-encoded at startup; `rpc`: JSON-RPC framing and typed errors.

mod content;
mod http;
mod legacy;
mod listen;
mod lists;
mod mirror;
mod mrtr;
mod prompts;
mod resources;
mod rpc;
mod seal;
mod session;
mod sse;
mod stateless;
mod streaming;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinSet;

/// Options for [`serve`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Answer `initialize` with this protocol version instead of negotiating (e.g. "2025-06-18"),
    /// so a real 2025-06-18 wire can be exercised.
    pub force_version: Option<String>,
    /// Speak only 2026-07-28, as a modern-only server does: no `initialize`,
    /// no sessions, GET and DELETE answered 405.
    pub stateless_only: bool,
    /// Misbehave on listen streams: send every change, asked for or not
    /// (to test that a gateway enforces the filter itself).
    pub ignore_listen_filter: bool,
}

/// Name and version reported in `serverInfo`.
pub(crate) const SERVER_NAME: &str = "stoa-reference";
pub(crate) const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest request body accepted; larger ones get 413.
pub(crate) const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Process-wide state shared by every connection.
pub(crate) struct State {
    pub opts: Options,
    pub sessions: session::Sessions,
    pub sealer: seal::Sealer,
    pub lists: lists::Lists,
    pub bus: listen::Bus,
    next_stream: AtomicU64,
}

impl State {
    fn new(opts: Options) -> std::io::Result<State> {
        let sealer = seal::Sealer::random()
            .map_err(|_| std::io::Error::other("no system randomness for the requestState key"))?;
        Ok(State {
            opts,
            sessions: session::Sessions::new(),
            sealer,
            lists: lists::Lists::build(),
            bus: listen::Bus::new(),
            next_stream: AtomicU64::new(1),
        })
    }

    /// A process-unique id for a stateless SSE stream (used in its event ids).
    pub fn next_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves MCP on `listener` at path `/mcp` until the future is dropped.
///
/// Connections are owned by the returned future: dropping it aborts them too, so a
/// test that drops its server does not leave sockets answering behind its back.
pub async fn serve(listener: tokio::net::TcpListener, opts: Options) -> std::io::Result<()> {
    let state = Arc::new(State::new(opts)?);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Usually EMFILE or a connection reset before accept: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| http::handle(state.clone(), req));
                    if let Err(e) = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
