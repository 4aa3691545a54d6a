//! Listeners: cleartext HTTP/1.1 + h2c, TLS (h1/h2 by ALPN), and HTTP/3 over
//! QUIC on the TLS port number. All hand requests to `Gateway::handle`; all
//! stop accepting on drain, let in-flight work finish, and are tracked so
//! shutdown can wait for them.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::{
    body::{Body, ChannelBody},
    config::Limits,
    gateway::{Gateway, Listener},
    h1,
    metrics::GaugeGuard,
};

/// What every accept loop shares.
#[derive(Clone)]
pub struct Serve {
    pub gw: Arc<Gateway>,
    pub limits: Limits,
    pub tracker: TaskTracker,
    /// Stop accepting and ask connections to close when idle.
    pub drain: Arc<Drain>,
    pub workers: Arc<Workers>,
}

/// Tells accept loops and every open connection that the gateway is
/// draining. A loop registers once (`watch`); polling is then an atomic load
/// and an `AtomicWaker` update, cheap enough for a connection loop that polls
/// it on every wake-up (`CancellationToken::cancelled` takes a mutex there).
#[derive(Default)]
pub struct Drain {
    started: AtomicBool,
    waiting: std::sync::Mutex<Vec<std::sync::Weak<AtomicWaker>>>,
}

/// One loop's registration with the `Drain`.
pub struct Watch {
    drain: Arc<Drain>,
    waker: Arc<AtomicWaker>,
}

impl Watch {
    /// Resolves once the drain has started.
    pub async fn started(&self) {
        std::future::poll_fn(|cx| self.drain.poll(&self.waker, cx)).await
    }
}

impl Drain {
    /// Wakes every registered loop; later polls see it at once.
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.lock());
        for w in waiting.iter().filter_map(std::sync::Weak::upgrade) {
            w.wake();
        }
    }

    pub fn watch(self: &Arc<Self>) -> Watch {
        Watch {
            drain: self.clone(),
            waker: self.register(),
        }
    }

    fn register(&self) -> Arc<AtomicWaker> {
        let w = Arc::new(AtomicWaker::new());
        let mut waiting = self.lock();
        // Loops that ended leave dead entries: sweep when they could be
        // half of the list.
        if waiting.len() >= 64 && waiting.len().is_power_of_two() {
            waiting.retain(|w| w.strong_count() > 0);
        }
        waiting.push(Arc::downgrade(&w));
        w
    }

    fn poll(&self, waker: &AtomicWaker, cx: &mut Context<'_>) -> Poll<()> {
        waker.register(cx.waker());
        if self.started.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<std::sync::Weak<AtomicWaker>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Threads that serve connections, each running a single-threaded runtime.
/// A connection is handed to one of them when accepted and lives there: its
/// requests, its upstream calls and their pooled connections never cross
/// threads, so there is no work stealing and no cross-thread wake-up on the
/// request path. TCP connections are dealt out in turn, which keeps the
/// threads evenly loaded where `SO_REUSEPORT` hashing would not; QUIC is
/// the exception (`serve_h3_on_workers`): its datagrams must reach the
/// thread that holds the connection, which a hash of the address does.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    /// Dropped to let the threads' runtimes end.
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    /// `n` threads. Each keeps a tokio timer due within a second: tokio
    /// wakes a runtime's driver, with an eventfd write and an extra epoll
    /// round, whenever a new timer is due before every timer it has, which
    /// a connection alone on its thread would otherwise pay for each
    /// upstream call's timeout.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("stoa-worker-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        let floor = async {
                            loop {
                                tick.tick().await;
                            }
                        };
                        tokio::select! {
                            _ = rx => {}
                            () = floor => {}
                        }
                    })
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Every worker thread's runtime.
    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.handles
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The thread the next connection goes to.
    pub fn next(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

fn h2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.ping_interval))
        .keep_alive_timeout(limits.send_timeout);
    b
}

/// Accepts TCP connections; with `tls`, performs the handshake first.
pub async fn serve_tcp(
    s: Serve,
    listener: TcpListener,
    tls: Option<(tokio_rustls::TlsAcceptor, Option<HeaderValue>)>,
    kind: Listener,
) {
    let limit = Arc::new(Semaphore::new(s.limits.max_connections));
    let transport = if tls.is_some() { "tls" } else { "tcp" };
    let drained = s.drain.watch();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = drained.started() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drained.started() => return,
        };
        let _ = stream.set_nodelay(true);
        // Moved to a worker's reactor: leave this one first.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, "could not hand the connection over: {e}");
                continue;
            }
        };
        let s2 = s.clone();
        let tls = tls.clone();
        let worker = s.workers.next();
        worker.spawn(s.tracker.track_future(async move {
            let _permit = permit;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "could not register the connection: {e}");
                    return;
                }
            };
            let _conn = GaugeGuard::new(s2.gw.metrics.connections.with_label_values(&[transport]));
            match tls {
                None => serve_conn(s2, stream, None, kind, Protocol::Sniff).await,
                Some((acceptor, alt_svc)) => {
                    match tokio::time::timeout(
                        s2.limits.header_read_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls_stream)) => {
                            let protocol = match tls_stream.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Protocol::H2,
                                Some(_) => Protocol::H1,
                                None => Protocol::Sniff,
                            };
                            serve_conn(s2, tls_stream, alt_svc, kind, protocol).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        }));
    }
}

/// What a connection speaks: told by ALPN, or by its first bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    H1,
    H2,
    /// HTTP/1.1, or h2 if it opens with the HTTP/2 preface.
    Sniff,
}

async fn serve_conn<IO>(
    s: Serve,
    io: IO,
    alt_svc: Option<HeaderValue>,
    kind: Listener,
    protocol: Protocol,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let mut io = Tracked {
        inner: io,
        activity: activity.clone(),
        unread: Bytes::new(),
    };
    let memo = Arc::new(crate::gateway::ConnMemo::default());
    // The idle check runs in a task of its own, which ends when the
    // connection is idle: the loop does not poll a timer on every wake-up.
    let mut idle = AbortOnDropHandle::new(tokio::spawn(watch_idle(
        activity.clone(),
        s.limits.idle_timeout,
    )));
    let drained = s.drain.watch();
    let read = if protocol == Protocol::H2 {
        Bytes::new()
    } else {
        let settings = h1::server::Settings {
            max_head: s.limits.max_header_bytes,
            header_read_timeout: s.limits.header_read_timeout,
            send_timeout: s.limits.send_timeout,
            sniff_h2: protocol == Protocol::Sniff,
        };
        let stop = pin!(async {
            tokio::select! {
                () = drained.started() => {}
                _ = &mut idle => {}
            }
        });
        let (gw, memo, act, alt_svc) = (&s.gw, &*memo, &*activity, &alt_svc);
        let ended = h1::server::serve(&mut io, &settings, stop, |head, body| async move {
            act.in_flight.fetch_add(1, Ordering::Relaxed);
            let mut resp = gw.handle(head, body, kind, Some(memo)).await;
            act.in_flight.fetch_sub(1, Ordering::Relaxed);
            act.touch();
            if let Some(v) = alt_svc {
                resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
            }
            resp
        })
        .await;
        match ended {
            h1::server::Ended::Closed => return,
            h1::server::Ended::H2(read) => read,
        }
    };
    let gw = s.gw.clone();
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let gw = gw.clone();
        let alt_svc = alt_svc.clone();
        let act = act.clone();
        let memo = memo.clone();
        async move {
            act.in_flight.fetch_add(1, Ordering::Relaxed);
            let (head, body) = req.into_parts();
            let mut resp = gw.handle(head.into(), body, kind, Some(&memo)).await;
            act.in_flight.fetch_sub(1, Ordering::Relaxed);
            act.touch();
            if let Some(v) = alt_svc {
                resp.headers_mut().insert(http::header::ALT_SVC, v);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    io.unread = read;
    let mut conn = pin!(h2_builder(&s.limits).serve_connection(TokioIo::new(io), svc));
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = drained.started(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut idle, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Returns once the connection is idle: no byte either way and no request
/// running for `IDLE_CHECKS` checks in a row, i.e. for about `idle_timeout`.
async fn watch_idle(activity: Arc<Activity>, idle_timeout: Duration) {
    const IDLE_CHECKS: u32 = 4;
    let mut check = tokio::time::interval(idle_timeout / IDLE_CHECKS + Duration::from_millis(1));
    check.tick().await;
    let mut quiet_checks = 0;
    while quiet_checks < IDLE_CHECKS {
        check.tick().await;
        if activity.quiet_since_last_check() && activity.in_flight.load(Ordering::Relaxed) == 0 {
            quiet_checks += 1;
        } else {
            quiet_checks = 0;
        }
    }
}

/// Whether a connection saw a read or write since the last idle check, and
/// requests still being answered. A flag, not a timestamp: the clock is not
/// read on every read and write.
struct Activity {
    touched: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            touched: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
        }
    }
    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }
    /// True if nothing happened since the previous call.
    fn quiet_since_last_check(&self) -> bool {
        !self.touched.swap(false, Ordering::Relaxed)
    }
}

/// An IO that records activity, so idle keep-alive connections can be
/// closed; its first reads return `unread` (what `h1::server` read of an
/// h2c connection before it knew, for hyper to read again).
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
    unread: Bytes,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// QUIC settings for every HTTP/3 endpoint: the TLS listener's resolver,
/// and the limits on streams and idle time.
pub fn quic_server_config(
    tls: Arc<rustls::ServerConfig>,
    limits: &Limits,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(limits.max_concurrent_streams.into());
    transport.max_idle_timeout(Some(limits.idle_timeout.try_into()?));
    transport.keep_alive_interval(None);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Serves HTTP/3 on `addr` (UDP) with one QUIC endpoint per worker thread,
/// all bound to the same port with `SO_REUSEPORT`. The kernel steers each
/// client's datagrams, by address, to one of the sockets: a connection's
/// packets, its QUIC state and its requests all stay on one thread, with no
/// hand-over between threads per packet. When a client's address changes
/// mid-connection (NAT rebinding, migration), its datagrams may reach
/// another worker's socket, which hands them to the worker that holds the
/// connection (`quic`). Returns the bound address.
pub fn serve_h3_on_workers(
    s: &Serve,
    addr: SocketAddr,
    cfg: quinn::ServerConfig,
) -> anyhow::Result<SocketAddr> {
    // One connection limit for the listener, whichever thread serves it.
    let limit = Arc::new(Semaphore::new(s.limits.max_connections));
    // One reset key for all the endpoints: a reset from any of them carries
    // the token its connection's owner issued.
    let shared = quinn::EndpointConfig::default();
    let sockets = bind_udp_group(addr, s.workers.len())?;
    let bound = sockets[0].local_addr()?;
    let m = &s.gw.metrics;
    let group = crate::quic::Group::new(
        sockets.len(),
        m.quic_handovers.with_label_values(&["handed_over"]),
        m.quic_handovers.with_label_values(&["dropped"]),
    );
    for (worker, (handle, socket)) in s.workers.handles().iter().zip(sockets).enumerate() {
        let mut endpoint_cfg = shared.clone();
        let g = group.clone();
        endpoint_cfg.cid_generator(move || {
            Box::new(crate::quic::CidGenerator {
                group: g.clone(),
                worker,
            })
        });
        // Created inside the worker's runtime: the socket registers with
        // that thread's reactor, and the endpoint's driver runs there.
        let endpoint = {
            let _in_worker = handle.enter();
            let runtime = Arc::new(quinn::TokioRuntime);
            let socket = Arc::new(crate::quic::Steered {
                inner: quinn::Runtime::wrap_udp_socket(&*runtime, socket)?,
                group: group.clone(),
                me: worker,
            });
            quinn::Endpoint::new_with_abstract_socket(
                endpoint_cfg,
                Some(cfg.clone()),
                socket,
                runtime,
            )?
        };
        handle.spawn(
            s.tracker
                .track_future(serve_h3(s.clone(), endpoint, limit.clone())),
        );
    }
    Ok(bound)
}

/// `n` UDP sockets on one port, `SO_REUSEPORT`. The port must be free: a
/// process already on it (say, a draining instance on the same host) would
/// otherwise share the datagrams, its connections' and ours, at random. A
/// plain bind first, released at once, fails if anyone holds the port.
fn bind_udp_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let probe = std::net::UdpSocket::bind(addr)?;
    let mut at = probe.local_addr()?;
    drop(probe);
    let mut sockets = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        let socket: std::net::UdpSocket = socket.into();
        at = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Accepts QUIC connections on one worker's endpoint and serves them there.
async fn serve_h3(s: Serve, endpoint: quinn::Endpoint, limit: Arc<Semaphore>) {
    let drained = s.drain.watch();
    // This endpoint's connections: on drain, it waits for them to close.
    let conns = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = drained.started() => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let s2 = s.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _conn = GaugeGuard::new(s2.gw.metrics.connections.with_label_values(&["quic"]));
            match incoming.await {
                Ok(conn) => serve_h3_conn(s2, conn).await,
                Err(e) => tracing::debug!("QUIC handshake failed: {e}"),
            }
        });
    }
    // Let open connections finish; refuse new ones.
    endpoint.set_server_config(None);
    conns.close();
    conns.wait().await;
    // A close is sent by the endpoint's driver, on its own time: before the
    // process may exit, let it tell every peer (or a client would only
    // learn by timing out). Bounded, for peers that are gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn serve_h3_conn(s: Serve, conn: quinn::Connection) {
    let quic = conn.clone();
    let mut h3 = match h3::server::builder()
        .max_field_section_size(s.limits.max_header_bytes as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("HTTP/3 setup failed: {e}");
            return;
        }
    };
    let drained = s.drain.watch();
    let mut closing = false;
    let memo = Arc::new(crate::gateway::ConnMemo::default());
    // This connection's requests: the connection closes once they are done.
    let requests = TaskTracker::new();
    loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) if closing => {
                    // At or past our GOAWAY's stream ID, which announced it
                    // as not processed: it must not be, the client retries.
                    requests.spawn(async move {
                        if let Ok((_, mut stream)) = resolver.resolve_request().await {
                            stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                            stream.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
                        }
                    });
                }
                Ok(Some(resolver)) => {
                    let gw = s.gw.clone();
                    let memo = memo.clone();
                    requests.spawn(s.tracker.track_future(async move {
                        if let Err(e) = serve_h3_request(gw, resolver, &memo).await {
                            tracing::debug!("HTTP/3 request failed: {e}");
                        }
                    }));
                }
                // The client's GOAWAY, its requests done.
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("HTTP/3 connection ended: {e}");
                    if quic.close_reason().is_some() {
                        return;
                    }
                    break;
                }
            },
            _ = drained.started(), if !closing => {
                closing = true;
                // GOAWAY naming the next request stream: every request
                // accepted so far is answered, none after.
                let _ = h3.shutdown(1).await;
                requests.close();
            }
            () = requests.wait(), if closing => break,
        }
    }
    // h3 would now wait for the client to close, which an idle client may
    // never do before the drain timeout: close it ourselves (RFC 9114
    // §5.2), once the answers are out.
    requests.close();
    requests.wait().await;
    linger(&quic).await;
    quic.close(H3_NO_ERROR, b"");
}

/// HTTP/3's "no error" code, for closing a connection after GOAWAY.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);
/// The longest a closing connection waits to have gone quiet.
const LINGER_MAX: Duration = Duration::from_secs(5);

/// Returns once the connection has been quiet (no datagram sent or
/// received) for a second and four round trips, or is closed, or after
/// `LINGER_MAX`. QUIC drops unsent and unacknowledged stream data on close;
/// quiet means the answers went out and were acknowledged, as quinn would
/// otherwise be retransmitting them.
async fn linger(quic: &quinn::Connection) {
    let traffic = |c: &quinn::Connection| {
        let st = c.stats();
        (st.udp_tx.datagrams, st.udp_rx.datagrams)
    };
    let deadline = tokio::time::Instant::now() + LINGER_MAX;
    let mut seen = traffic(quic);
    loop {
        let window = quic.rtt() * 4 + Duration::from_secs(1);
        tokio::select! {
            _ = quic.closed() => return,
            () = tokio::time::sleep(window) => {}
        }
        let now = traffic(quic);
        if now == seen || tokio::time::Instant::now() >= deadline {
            return;
        }
        seen = now;
    }
}

async fn serve_h3_request(
    gw: Arc<Gateway>,
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    memo: &crate::gateway::ConnMemo,
) -> anyhow::Result<()> {
    let (req, stream) = resolver.resolve_request().await?;
    let (mut send, mut recv) = stream.split();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, crate::body::BoxError>>(8);
    // The body is pulled only as fast as the gateway reads it.
    let reader = async move {
        loop {
            match recv.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    if tx.send(Ok(Frame::data(bytes))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(Box::new(e))).await;
                    return;
                }
            }
        }
    };
    tokio::spawn(reader);
    let head = req.into_parts().0.into();
    let resp: Response<Body> = gw
        .handle(head, ChannelBody::new(rx), Listener::Public, Some(memo))
        .await;
    let (parts, body) = resp.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    send.send_data(data).await?;
                }
            }
            Err(e) => anyhow::bail!("response body failed: {e}"),
        }
    }
    send.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_drain_wakes_registered_loops_and_is_seen_by_later_ones() {
        let drain = Arc::new(Drain::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let early = drain.register();
        assert!(drain.poll(&early, &mut cx).is_pending());
        drain.start();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the waiting connection is woken"
        );
        assert!(drain.poll(&early, &mut cx).is_ready());
        let late = drain.watch();
        assert!(drain.poll(&late.waker, &mut cx).is_ready());
    }

    #[test]
    fn a_udp_group_shares_a_free_port_and_no_one_elses() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let group = bind_udp_group(any, 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(port != 0);
        assert!(group.iter().all(|s| s.local_addr().unwrap().port() == port));
        // Taken by us: a second group (another process) is refused.
        assert!(bind_udp_group(group[0].local_addr().unwrap(), 2).is_err());
        drop(group);
        // Taken by a plain socket: refused too.
        let plain = std::net::UdpSocket::bind(any).unwrap();
        assert!(bind_udp_group(plain.local_addr().unwrap(), 2).is_err());
    }

    #[test]
    fn ended_loops_are_swept_from_the_list() {
        let drain = Arc::new(Drain::default());
        for _ in 0..1000 {
            drop(drain.watch());
        }
        let live = drain.watch();
        assert!(drain.lock().len() < 200, "{}", drain.lock().len());
        drop(live);
    }
}
