//! Stateful-wire (2025) sessions: negotiated version, client capabilities, log
//! level, SSE stream logs for resumption, and server→client requests awaiting an answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::rpc;
use super::sse::{self, Sink, SseBody};

/// Sessions kept at most; the oldest is evicted beyond this so a benchmark that
/// never sends DELETE cannot grow memory without bound.
const MAX_SESSIONS: usize = 100_000;
/// Stream logs kept per session for resumption.
const MAX_STREAM_LOGS: usize = 64;

/// Log levels in increasing severity, as named by MCP.
pub(crate) const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

pub(crate) fn level_index(name: &str) -> Option<u8> {
    LEVELS
        .iter()
        .position(|l| *l == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// Locks a mutex; a panic elsewhere never makes the state unusable here.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Sessions {
    /// Read-mostly: every request looks its session up, few create or end one.
    inner: RwLock<Inner>,
    rng: SystemRandom,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Arc<str>, Arc<Session>>,
    order: VecDeque<Arc<str>>,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {
            inner: RwLock::new(Inner::default()),
            rng: SystemRandom::new(),
        }
    }

    /// Creates and registers a session. The id is 128 random bits in hex
    /// (visible ASCII, as the spec requires).
    pub fn create(&self, version: String, caps: Value) -> Option<Arc<Session>> {
        let mut raw = [0u8; 16];
        self.rng.fill(&mut raw).ok()?;
        let id: Arc<str> = raw
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into();
        let session = Arc::new(Session::new(id.clone(), version, caps));
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        while inner.map.len() >= MAX_SESSIONS {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.map.remove(&old);
        }
        // `remove` leaves ids in `order` (an O(n) scan per DELETE would hurt
        // benchmarks); compact it once the stale entries dominate.
        if inner.order.len() > 2 * inner.map.len() + 1024 {
            let Inner { map, order } = &mut *inner;
            order.retain(|k| map.contains_key(k));
        }
        inner.order.push_back(id.clone());
        inner.map.insert(id, session.clone());
        Some(session)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(id)
            .cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .remove(id)
    }
}

pub(crate) struct Session {
    pub id: Arc<str>,
    pub version: String,
    /// Capabilities the client declared in `initialize`.
    pub caps: Value,
    log_level: AtomicU8,
    next_stream: AtomicU64,
    next_request: AtomicU64,
    streams: Mutex<StreamLogs>,
    pending: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    standalone: Mutex<Option<Standalone>>,
    subscriptions: Mutex<HashSet<String>>,
}

/// The client's answer to a server→client request: its `result` or its `error`.
pub(crate) type Reply = Result<Value, Value>;

#[derive(Default)]
struct StreamLogs {
    logs: HashMap<u64, StreamLog>,
    order: VecDeque<u64>,
}

struct StreamLog {
    events: Vec<(u64, Bytes)>,
    next_seq: u64,
    live: Option<mpsc::UnboundedSender<Bytes>>,
    done: bool,
}

/// The `GET` stream for notifications not tied to a request.
struct Standalone {
    tx: mpsc::UnboundedSender<Bytes>,
    stream: u64,
    seq: u64,
}

impl Session {
    fn new(id: Arc<str>, version: String, caps: Value) -> Session {
        Session {
            id,
            version,
            caps,
            log_level: AtomicU8::new(0),
            next_stream: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
            streams: Mutex::default(),
            pending: Mutex::default(),
            standalone: Mutex::default(),
            subscriptions: Mutex::default(),
        }
    }

    pub fn set_log_level(&self, level: u8) {
        self.log_level.store(level, Ordering::Relaxed);
    }

    /// Minimum level sent as `notifications/message`; everything until `logging/setLevel`.
    pub fn log_level(&self) -> u8 {
        self.log_level.load(Ordering::Relaxed)
    }

    /// Opens a logged SSE stream for one POST. Sessions at 2025-11-25 or later get a
    /// priming event first (SEP-1699); older clients may not expect an empty event.
    pub fn open_stream(self: &Arc<Self>, retry_ms: Option<u32>) -> (Sink, SseBody) {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, body) = SseBody::channel();
        let mut events = Vec::new();
        if self.version.as_str() >= "2025-11-25" {
            let prime = sse::priming(stream, retry_ms);
            let _ = tx.send(prime.clone());
            events.push((0, prime));
        }
        let mut streams = lock(&self.streams);
        while streams.order.len() >= MAX_STREAM_LOGS {
            let Some(old) = streams.order.pop_front() else {
                break;
            };
            streams.logs.remove(&old);
        }
        streams.order.push_back(stream);
        streams.logs.insert(
            stream,
            StreamLog {
                events,
                next_seq: 1,
                live: Some(tx),
                done: false,
            },
        );
        (
            Sink::Logged {
                session: self.clone(),
                stream,
            },
            body,
        )
    }

    pub(crate) fn log_event(&self, stream: u64, data: &[u8]) {
        let mut streams = lock(&self.streams);
        let Some(log) = streams.logs.get_mut(&stream) else {
            return;
        };
        let seq = log.next_seq;
        log.next_seq += 1;
        let ev = sse::event(stream, seq, data);
        if let Some(tx) = &log.live
            && tx.send(ev.clone()).is_err()
        {
            log.live = None;
        }
        log.events.push((seq, ev));
    }

    pub(crate) fn detach_stream(&self, stream: u64) {
        if let Some(log) = lock(&self.streams).logs.get_mut(&stream) {
            log.live = None;
        }
    }

    pub(crate) fn finish_stream(&self, stream: u64) {
        if let Some(log) = lock(&self.streams).logs.get_mut(&stream) {
            log.live = None;
            log.done = true;
        }
    }

    /// Resumes a POST stream after `Last-Event-ID`: replays later events, then stays
    /// attached if the stream has not finished. `None` if the id names no stream.
    pub fn resume(&self, last_event_id: &str) -> Option<SseBody> {
        let (stream, seq) = sse::parse_event_id(last_event_id)?;
        let mut streams = lock(&self.streams);
        let log = streams.logs.get_mut(&stream)?;
        let (tx, body) = SseBody::channel();
        for (_, ev) in log.events.iter().filter(|(s, _)| *s > seq) {
            let _ = tx.send(ev.clone());
        }
        if !log.done {
            log.live = Some(tx);
        }
        Some(body)
    }

    /// Opens (or replaces) the standalone `GET` stream.
    pub fn open_standalone(&self) -> SseBody {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, body) = SseBody::channel();
        let _ = tx.send(sse::priming(stream, None));
        *lock(&self.standalone) = Some(Standalone { tx, stream, seq: 0 });
        body
    }

    /// Sends a notification on the standalone stream, if one is open.
    pub fn notify_standalone(&self, method: &str, params: &Value) {
        let mut slot = lock(&self.standalone);
        if let Some(s) = slot.as_mut() {
            s.seq += 1;
            let ev = sse::event(s.stream, s.seq, &rpc::encode_notification(method, params));
            if s.tx.send(ev).is_err() {
                *slot = None;
            }
        }
    }

    /// Sends a server→client request on `sink`; the receiver yields the client's answer.
    pub fn request(
        &self,
        sink: &mut Sink,
        method: &str,
        params: &Value,
    ) -> oneshot::Receiver<Reply> {
        let id = format!("stoa-{}", self.next_request.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        // Keyed by the id's JSON text, which is what the client echoes back.
        lock(&self.pending).insert(format!("\"{id}\""), tx);
        sink.send(&rpc::encode_request(&id, method, params));
        rx
    }

    /// Routes a client's JSON-RPC response to the request waiting for it.
    /// Returns false when nothing was waiting (unknown or late id).
    pub fn answer(&self, id: &RawValue, reply: Reply) -> bool {
        match lock(&self.pending).remove(id.get().trim()) {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Forgets requests whose waiter gave up (timed out), so they cannot pile up.
    pub fn prune_pending(&self) {
        lock(&self.pending).retain(|_, tx| !tx.is_closed());
    }

    pub fn subscribe(&self, uri: &str) {
        lock(&self.subscriptions).insert(uri.to_owned());
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        lock(&self.subscriptions).contains(uri)
    }

    pub fn unsubscribe(&self, uri: &str) {
        lock(&self.subscriptions).remove(uri);
    }
}
