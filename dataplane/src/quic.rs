//! QUIC datagrams that reach the wrong worker.
//!
//! HTTP/3 runs one QUIC endpoint per worker thread, all on one UDP port
//! with `SO_REUSEPORT` (`listen::serve_h3_on_workers`). The kernel picks a
//! socket by a hash of the client's address, so when that address changes
//! mid-connection (NAT rebinding, a client moving to another network), the
//! datagrams land on a socket whose endpoint has never heard of the
//! connection. Left alone, that endpoint would answer with a stateless
//! reset and the connection would die.
//!
//! So each endpoint names its connections with connection IDs that say
//! which worker issued them ([`CidGenerator`]), and each socket is wrapped
//! ([`Steered`]) to look at the destination connection ID of every
//! short-header datagram it receives: one issued by another worker is
//! handed to that worker's inbox, and its endpoint receives it as if its
//! own socket had. The endpoint then validates the new path and answers
//! from its own socket, which shares the port. Long-header datagrams (the
//! handshake) always stay where they land: migration is only allowed once
//! the handshake is done, and a new client's first datagrams carry an ID
//! the client chose.
//!
//! The worker's number is not written in the clear: the ID's first byte is
//! the number XOR a keyed hash of the other seven random bytes, so an
//! observer without the process's key sees eight random bytes.
//!
//! A connection that moved keeps costing one hand-over per datagram (the
//! kernel keeps picking the other socket); an inbox holds at most
//! [`INBOX_DATAGRAMS`] datagrams and [`INBOX_BYTES`] bytes and drops beyond
//! that, as a network would.
//!
//! Known gap: a client's stateless reset starts with random bytes, so it
//! may be handed to a worker that cannot match its token; that connection
//! then ends at its idle timeout rather than at once.

use std::{
    collections::VecDeque,
    fmt,
    hash::BuildHasher,
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use quinn::{
    AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller,
    udp::{EcnCodepoint, RecvMeta, Transmit},
};
use ring::rand::SecureRandom;

/// Length of the connection IDs this gateway issues.
const CID_LEN: usize = 8;
/// Datagrams, and bytes, waiting in one worker's inbox; more are dropped.
pub const INBOX_DATAGRAMS: usize = 1024;
pub const INBOX_BYTES: usize = 2 << 20;

/// The workers of one HTTP/3 listener: their inboxes and the key that
/// hides worker numbers in connection IDs.
pub struct Group {
    inboxes: Box<[Inbox]>,
    key: std::hash::RandomState,
    /// Datagrams handed to another worker, and those dropped on a full inbox.
    pub handed_over: prometheus::IntCounter,
    pub dropped: prometheus::IntCounter,
}

#[derive(Default)]
struct Inbox {
    queue: Mutex<Queue>,
    /// `queue`'s length, read without the lock on every receive.
    len: AtomicUsize,
    waker: AtomicWaker,
}

#[derive(Default)]
struct Queue {
    strays: VecDeque<Stray>,
    bytes: usize,
}

/// A datagram received by the wrong socket.
struct Stray {
    data: Box<[u8]>,
    addr: SocketAddr,
    ecn: Option<EcnCodepoint>,
    dst_ip: Option<IpAddr>,
}

impl Group {
    /// A group of `workers` endpoints (`config::MAX_WORKERS` at most: a
    /// connection ID names its worker in one byte).
    pub fn new(
        workers: usize,
        handed_over: prometheus::IntCounter,
        dropped: prometheus::IntCounter,
    ) -> Arc<Group> {
        Arc::new(Group {
            inboxes: (0..workers.clamp(1, crate::config::MAX_WORKERS))
                .map(|_| Inbox::default())
                .collect(),
            key: std::hash::RandomState::new(),
            handed_over,
            dropped,
        })
    }

    /// What a worker's number is XORed with in the first byte of a
    /// connection ID: a keyed hash (SipHash, the process's random key) of
    /// the ID's other bytes.
    fn mask(&self, rest: &[u8]) -> u8 {
        self.key.hash_one(rest) as u8
    }

    /// The worker that issued the connection ID of a short-header
    /// datagram, if it is one of ours.
    fn owner(&self, datagram: &[u8]) -> Option<usize> {
        // Short header: the form bit clear, then the destination ID.
        if datagram.len() < 1 + CID_LEN || datagram[0] & 0x80 != 0 {
            return None;
        }
        let cid = &datagram[1..1 + CID_LEN];
        let w = usize::from(cid[0] ^ self.mask(&cid[1..]));
        (w < self.inboxes.len()).then_some(w)
    }

    fn hand_over(&self, to: usize, data: &[u8], meta: &RecvMeta) {
        let inbox = &self.inboxes[to];
        {
            let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.strays.len() >= INBOX_DATAGRAMS || q.bytes + data.len() > INBOX_BYTES {
                self.dropped.inc();
                return;
            }
            q.bytes += data.len();
            q.strays.push_back(Stray {
                data: data.into(),
                addr: meta.addr,
                ecn: meta.ecn,
                dst_ip: meta.dst_ip,
            });
            inbox.len.store(q.strays.len(), Ordering::Release);
        }
        self.handed_over.inc();
        inbox.waker.wake();
    }
}

/// Issues connection IDs that name worker `worker` of `group`.
pub struct CidGenerator {
    pub group: Arc<Group>,
    pub worker: usize,
}

impl ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; CID_LEN];
        // The system RNG does not fail on Linux once booted; were it to,
        // the ID is still unique enough for routing but predictable, so
        // fail loudly rather than hand out zeros.
        ring::rand::SystemRandom::new()
            .fill(&mut cid)
            .expect("system randomness for a QUIC connection ID");
        cid[0] = (self.worker as u8) ^ self.group.mask(&cid[1..]);
        ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Worker `me`'s socket: receives its own datagrams and those other
/// workers hand over, and hands over those that belong elsewhere.
pub struct Steered {
    pub inner: Arc<dyn AsyncUdpSocket>,
    pub group: Arc<Group>,
    pub me: usize,
}

impl fmt::Debug for Steered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steered").field("me", &self.me).finish()
    }
}

impl Steered {
    /// Keeps the datagrams of one received buffer that are this worker's,
    /// moved to its front, and hands the others over.
    fn sort(&self, buf: &mut [u8], meta: &mut RecvMeta) {
        let stride = meta.stride.max(1);
        let (mut at, mut kept) = (0, 0);
        while at < meta.len {
            let end = (at + stride).min(meta.len);
            match self.group.owner(&buf[at..end]) {
                Some(w) if w != self.me => self.group.hand_over(w, &buf[at..end], meta),
                _ => {
                    if kept != at {
                        buf.copy_within(at..end, kept);
                    }
                    kept += end - at;
                }
            }
            at = end;
        }
        meta.len = kept;
    }

    /// Moves handed-over datagrams into `bufs`; how many.
    fn take_strays(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let inbox = &self.group.inboxes[self.me];
        if inbox.len.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some(s) = q.strays.pop_front() else {
                break;
            };
            q.bytes -= s.data.len();
            // Every endpoint's buffers are alike, and the datagram came in
            // through one: it fits. Were it not to, a cut datagram fails
            // its authentication and is dropped, as a network would.
            let len = s.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&s.data[..len]);
            meta[n] = RecvMeta {
                addr: s.addr,
                len,
                stride: len.max(1),
                ecn: s.ecn,
                dst_ip: s.dst_ip,
            };
            n += 1;
        }
        inbox.len.store(q.strays.len(), Ordering::Release);
        n
    }
}

impl AsyncUdpSocket for Steered {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Registered before looking, so a hand-over after the look wakes us.
        self.group.inboxes[self.me].waker.register(cx.waker());
        let n = self.take_strays(bufs, meta);
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        if self.group.inboxes.len() > 1 {
            for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
                self.sort(buf, meta);
            }
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use quinn::Runtime;

    use super::*;

    fn group(n: usize) -> Arc<Group> {
        let c = || prometheus::IntCounter::new("c", "c").unwrap();
        Group::new(n, c(), c())
    }

    fn short_header(cid: &ConnectionId, payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0x40];
        d.extend_from_slice(cid);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn an_id_names_the_worker_that_issued_it_and_looks_random() {
        let g = group(4);
        let mut first_bytes = std::collections::HashSet::new();
        for w in 0..4 {
            let mut cids = CidGenerator {
                group: g.clone(),
                worker: w,
            };
            for _ in 0..64 {
                let cid = cids.generate_cid();
                assert_eq!(cid.len(), CID_LEN);
                assert_eq!(g.owner(&short_header(&cid, b"payload")), Some(w));
                first_bytes.insert(cid[0]);
            }
        }
        // Not the worker number in the clear: far more than 4 values.
        assert!(first_bytes.len() > 32, "{}", first_bytes.len());
        // Long headers (the handshake) are never routed.
        let cid = CidGenerator {
            group: g.clone(),
            worker: 1,
        }
        .generate_cid();
        let mut long = short_header(&cid, b"payload");
        long[0] = 0xc0;
        assert_eq!(g.owner(&long), None);
        // Too short to hold an ID.
        assert_eq!(g.owner(&[0x40, 1, 2]), None);
    }

    #[tokio::test]
    async fn a_buffer_keeps_its_own_datagrams_in_order_and_hands_over_the_rest() {
        let g = group(2);
        let mut gens: Vec<_> = (0..2)
            .map(|w| CidGenerator {
                group: g.clone(),
                worker: w,
            })
            .collect();
        let mine = gens[0].generate_cid();
        let theirs = gens[1].generate_cid();
        // Three datagrams, 16 bytes apart, the middle one worker 1's; the
        // last one shorter, as GRO allows.
        let a = short_header(&mine, b"aaaaaaa");
        let b = short_header(&theirs, b"bbbbbbb");
        let c = short_header(&mine, b"cc");
        let mut buf = [a.as_slice(), &b, &c].concat();
        let mut meta = RecvMeta {
            addr: "127.0.0.1:5000".parse().unwrap(),
            len: buf.len(),
            stride: 16,
            ecn: None,
            dst_ip: None,
        };
        let s0 = Steered {
            inner: quinn::TokioRuntime
                .wrap_udp_socket(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap(),
            group: g.clone(),
            me: 0,
        };
        s0.sort(&mut buf, &mut meta);
        assert_eq!(&buf[..meta.len], [a.as_slice(), &c].concat().as_slice());
        assert_eq!(g.handed_over.get(), 1);

        // Worker 1 receives it with the sender's address.
        let s1 = Steered {
            inner: s0.inner.clone(),
            group: g.clone(),
            me: 1,
        };
        let mut storage = [0u8; 64];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let mut metas = [RecvMeta::default()];
        assert_eq!(s1.take_strays(&mut bufs, &mut metas), 1);
        assert_eq!(&bufs[0][..metas[0].len], b.as_slice());
        assert_eq!(metas[0].addr, meta.addr);
        assert_eq!(s1.take_strays(&mut bufs, &mut metas), 0);
    }
}
