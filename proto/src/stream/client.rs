//! The gateway's end of the config stream.
//!
//! It says Hello with what the gateway holds, hands the gateway each chunk
//! of an update as it arrives (so that a large snapshot is lowered chunk by
//! chunk, never held whole as wire types), checks that chunks belong
//! together and that a revision follows from what is held, turns the
//! gateway's apply result into ACK or NACK, and paces reconnection with
//! jittered exponential backoff. It never applies anything itself.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::StreamError;
use crate::pb::{self, watch_request::Message};

#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway_id: String,
    pub version: String,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Most resources one update may hold (all chunks together).
    pub max_resources: usize,
}

/// One chunk of a revision, to apply on top of the chunks before it. The
/// revision is whole, and answered with `handle_applied`, after the `last`.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub store_id: String,
    pub revision: u64,
    pub nonce: u64,
    /// Replaces everything held; otherwise a delta on the held revision.
    pub full: bool,
    /// The first chunk of its revision: start from empty (full) or from
    /// what is held (delta).
    pub first: bool,
    /// The last chunk: apply the revision, then answer.
    pub last: bool,
    pub upserts: Vec<pb::Resource>,
    pub removes: Vec<pb::ResourceRef>,
}

/// The revision being received: what its chunks must agree on.
#[derive(Debug, Clone)]
struct Header {
    store_id: String,
    revision: u64,
    nonce: u64,
    full: bool,
    resources: usize,
}

#[derive(Debug)]
enum State {
    /// Not connected; reconnect at this instant.
    Waiting { until: Instant },
    /// Connected; maybe in the middle of a chunked update.
    Connected { assembling: Option<Header> },
    /// The last chunk was handed out and the apply result is awaited.
    Applying { update: (String, u64, u64) },
}

#[derive(Debug)]
pub struct ClientStream {
    settings: Settings,
    /// The store and revision the gateway serves.
    held: Option<(String, u64)>,
    state: State,
    failures: u32,
    rng: u64,
    transmit: VecDeque<pb::WatchRequest>,
}

impl ClientStream {
    /// `held` is what the gateway already serves (from its cache file);
    /// `seed` feeds the backoff jitter.
    pub fn new(settings: Settings, held: Option<(String, u64)>, seed: u64, now: Instant) -> Self {
        ClientStream {
            settings,
            held,
            state: State::Waiting { until: now },
            failures: 0,
            rng: seed | 1,
            transmit: VecDeque::new(),
        }
    }

    /// The store and revision the gateway serves.
    pub fn held(&self) -> Option<(&str, u64)> {
        self.held.as_ref().map(|(s, r)| (s.as_str(), *r))
    }

    pub fn is_connected(&self) -> bool {
        !matches!(self.state, State::Waiting { .. })
    }

    /// When to call `poll_connect` next, while disconnected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { until } => Some(until),
            _ => None,
        }
    }

    /// Whether it is time to open a stream.
    pub fn poll_connect(&self, now: Instant) -> bool {
        matches!(self.state, State::Waiting { until } if now >= until)
    }

    /// A stream is open: say who we are and what we hold.
    pub fn handle_connected(&mut self) {
        self.transmit.clear();
        self.state = State::Connected { assembling: None };
        let (store_id, revision) = self.held.clone().unwrap_or_default();
        self.transmit.push_back(pb::WatchRequest {
            message: Some(Message::Hello(pb::Hello {
                gateway_id: self.settings.gateway_id.clone(),
                store_id,
                revision,
                version: self.settings.version.clone(),
            })),
        });
    }

    /// A message arrived: returns it as a chunk to apply. An error means the
    /// control plane broke the protocol and the stream should be dropped
    /// (with whatever the chunks so far built).
    pub fn handle_update(&mut self, u: pb::ConfigUpdate) -> Result<Update, StreamError> {
        let State::Connected { assembling } = &mut self.state else {
            // Updates while applying (or after a disconnect) break the
            // one-in-flight rule.
            let pending = match &self.state {
                State::Applying { update } => update.2,
                _ => 0,
            };
            return Err(StreamError::Interleaved {
                nonce: u.nonce,
                pending,
            });
        };
        // The control plane answers: whatever happened before, it is up.
        self.failures = 0;
        let count = u.upserts.len() + u.removes.len();
        let first = assembling.is_none();
        let mut header = match assembling.take() {
            None => {
                if !u.full {
                    match &self.held {
                        Some((store, held)) if *store == u.store_id => {
                            // An empty delta at the held revision means "you are current".
                            let in_sync = u.revision == *held && count == 0 && !u.more;
                            if u.revision < *held || (u.revision == *held && !in_sync) {
                                return Err(StreamError::Backwards {
                                    nonce: u.nonce,
                                    held: *held,
                                    revision: u.revision,
                                });
                            }
                        }
                        _ => return Err(StreamError::DeltaWithoutBase),
                    }
                }
                Header {
                    store_id: u.store_id.clone(),
                    revision: u.revision,
                    nonce: u.nonce,
                    full: u.full,
                    resources: 0,
                }
            }
            Some(h) => {
                if h.nonce != u.nonce {
                    return Err(StreamError::Interleaved {
                        nonce: u.nonce,
                        pending: h.nonce,
                    });
                }
                if h.revision != u.revision || h.store_id != u.store_id || h.full != u.full {
                    return Err(StreamError::ChunkMismatch { nonce: u.nonce });
                }
                h
            }
        };
        header.resources += count;
        if header.resources > self.settings.max_resources {
            return Err(StreamError::TooLarge {
                nonce: u.nonce,
                limit: self.settings.max_resources,
            });
        }
        let last = !u.more;
        if last {
            self.state = State::Applying {
                update: (header.store_id.clone(), header.revision, header.nonce),
            };
        } else {
            *assembling = Some(header);
        }
        Ok(Update {
            store_id: u.store_id,
            revision: u.revision,
            nonce: u.nonce,
            full: u.full,
            first,
            last,
            upserts: u.upserts,
            removes: u.removes,
        })
    }

    /// The gateway applied (or refused) the update it was handed.
    pub fn handle_applied(&mut self, result: Result<(), Vec<pb::Rejection>>) {
        let State::Applying {
            update: (store_id, revision, nonce),
        } = std::mem::replace(&mut self.state, State::Connected { assembling: None })
        else {
            return;
        };
        let message = match result {
            Ok(()) => {
                self.held = Some((store_id, revision));
                Message::Ack(pb::Ack { nonce, revision })
            }
            Err(rejected) => Message::Nack(pb::Nack {
                nonce,
                revision,
                rejected,
            }),
        };
        self.transmit.push_back(pb::WatchRequest {
            message: Some(message),
        });
    }

    /// The stream ended (or never opened). Whatever was half-assembled is
    /// dropped; the gateway keeps serving what it holds.
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.transmit.clear();
        self.failures = self.failures.saturating_add(1);
        let until = now + self.backoff();
        self.state = State::Waiting { until };
    }

    pub fn poll_transmit(&mut self) -> Option<pb::WatchRequest> {
        self.transmit.pop_front()
    }

    /// `min * 2^(failures-1)`, capped at `max`, then a uniform draw from its
    /// upper half so that gateways cut off together do not return together.
    fn backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(20);
        let base = self
            .settings
            .backoff_min
            .saturating_mul(1 << exp)
            .min(self.settings.backoff_max);
        // xorshift64: good enough to spread reconnects, and deterministic in tests.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + frac / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::resource::Resource as R;

    fn settings() -> Settings {
        Settings {
            gateway_id: "gw-1".into(),
            version: "test".into(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_resources: 1000,
        }
    }

    fn tenant(name: &str) -> pb::Resource {
        pb::Resource {
            resource: Some(R::Tenant(pb::Tenant {
                name: name.into(),
                display_name: String::new(),
            })),
        }
    }

    fn update(
        nonce: u64,
        revision: u64,
        full: bool,
        names: &[&str],
        more: bool,
    ) -> pb::ConfigUpdate {
        pb::ConfigUpdate {
            store_id: "s".into(),
            revision,
            nonce,
            full,
            upserts: names.iter().map(|n| tenant(n)).collect(),
            removes: vec![],
            more,
        }
    }

    fn hello_of(c: &mut ClientStream) -> pb::Hello {
        match c.poll_transmit().and_then(|m| m.message) {
            Some(Message::Hello(h)) => h,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_ack_delta_ack() {
        let now = Instant::now();
        let mut c = ClientStream::new(settings(), None, 1, now);
        assert!(c.poll_connect(now));
        c.handle_connected();
        let h = hello_of(&mut c);
        assert_eq!((h.gateway_id.as_str(), h.revision), ("gw-1", 0));

        let u = c
            .handle_update(update(1, 5, true, &["a", "b"], false))
            .unwrap();
        assert_eq!((u.revision, u.full, u.upserts.len()), (5, true, 2));
        assert_eq!(c.held(), None, "held only once applied");
        c.handle_applied(Ok(()));
        assert_eq!(c.held(), Some(("s", 5)));
        assert!(matches!(
            c.poll_transmit().and_then(|m| m.message),
            Some(Message::Ack(pb::Ack {
                nonce: 1,
                revision: 5
            }))
        ));

        let d = c.handle_update(update(2, 6, false, &["c"], false)).unwrap();
        assert!(!d.full);
        c.handle_applied(Ok(()));
        assert_eq!(c.held(), Some(("s", 6)));
    }

    #[test]
    fn chunks_arrive_one_by_one_and_make_one_revision() {
        let now = Instant::now();
        let mut c = ClientStream::new(settings(), None, 1, now);
        c.handle_connected();
        c.poll_transmit();
        let a = c.handle_update(update(1, 9, true, &["a"], true)).unwrap();
        assert!(a.first && !a.last);
        let b = c.handle_update(update(1, 9, true, &["b"], true)).unwrap();
        assert!(!b.first && !b.last);
        let z = c.handle_update(update(1, 9, true, &["c"], false)).unwrap();
        assert!(!z.first && z.last);
        assert_eq!(
            z.upserts.len(),
            1,
            "each chunk carries only its own resources"
        );
        c.handle_applied(Ok(()));
        assert_eq!(c.held(), Some(("s", 9)));

        let mut c = ClientStream::new(settings(), None, 1, now);
        c.handle_connected();
        c.handle_update(update(1, 9, true, &["a"], true)).unwrap();
        assert_eq!(
            c.handle_update(update(1, 10, true, &["b"], false)),
            Err(StreamError::ChunkMismatch { nonce: 1 })
        );
        let mut c = ClientStream::new(settings(), None, 1, now);
        c.handle_connected();
        c.handle_update(update(1, 9, true, &["a"], true)).unwrap();
        assert!(matches!(
            c.handle_update(update(2, 9, true, &["b"], false)),
            Err(StreamError::Interleaved {
                nonce: 2,
                pending: 1
            })
        ));
    }

    #[test]
    fn nack_keeps_the_held_revision() {
        let now = Instant::now();
        let mut c = ClientStream::new(settings(), Some(("s".into(), 4)), 1, now);
        c.handle_connected();
        assert_eq!(hello_of(&mut c).revision, 4, "resumes from what it holds");
        c.handle_update(update(1, 5, false, &["x"], false)).unwrap();
        let why = pb::Rejection {
            resource: None,
            reason: "bad".into(),
        };
        c.handle_applied(Err(vec![why.clone()]));
        assert_eq!(c.held(), Some(("s", 4)));
        match c.poll_transmit().and_then(|m| m.message) {
            Some(Message::Nack(n)) => {
                assert_eq!((n.nonce, n.revision, n.rejected), (1, 5, vec![why]))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deltas_must_follow_what_is_held() {
        let now = Instant::now();
        let mut c = ClientStream::new(settings(), None, 1, now);
        c.handle_connected();
        assert_eq!(
            c.handle_update(update(1, 5, false, &[], false)),
            Err(StreamError::DeltaWithoutBase)
        );
        let mut c = ClientStream::new(settings(), Some(("s".into(), 8)), 1, now);
        c.handle_connected();
        assert!(matches!(
            c.handle_update(update(1, 7, false, &[], false)),
            Err(StreamError::Backwards { .. })
        ));
        let mut c = ClientStream::new(settings(), Some(("s".into(), 8)), 1, now);
        c.handle_connected();
        assert!(matches!(
            c.handle_update(update(1, 8, false, &["x"], false)),
            Err(StreamError::Backwards { .. })
        ));
        let mut c = ClientStream::new(settings(), Some(("s".into(), 8)), 1, now);
        c.handle_connected();
        assert!(
            c.handle_update(update(1, 8, false, &[], false)).is_ok(),
            "an empty delta at the held revision: in sync"
        );
        let mut c = ClientStream::new(settings(), Some(("other".into(), 8)), 1, now);
        c.handle_connected();
        assert_eq!(
            c.handle_update(update(1, 9, false, &[], false)),
            Err(StreamError::DeltaWithoutBase),
            "a delta from another store"
        );
        // A full snapshot may go anywhere (a restored or different store).
        let mut c = ClientStream::new(settings(), Some(("s".into(), 8)), 1, now);
        c.handle_connected();
        assert!(c.handle_update(update(1, 3, true, &[], false)).is_ok());
    }

    #[test]
    fn updates_are_bounded() {
        let now = Instant::now();
        let mut s = settings();
        s.max_resources = 2;
        let mut c = ClientStream::new(s, None, 1, now);
        c.handle_connected();
        c.handle_update(update(1, 9, true, &["a", "b"], true))
            .unwrap();
        assert!(matches!(
            c.handle_update(update(1, 9, true, &["c"], true)),
            Err(StreamError::TooLarge { limit: 2, .. })
        ));
    }

    #[test]
    fn one_update_at_a_time() {
        let now = Instant::now();
        let mut c = ClientStream::new(settings(), None, 1, now);
        c.handle_connected();
        c.handle_update(update(1, 5, true, &[], false)).unwrap();
        assert!(matches!(
            c.handle_update(update(2, 6, false, &[], false)),
            Err(StreamError::Interleaved {
                nonce: 2,
                pending: 1
            })
        ));
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets_once_the_control_plane_answers() {
        let t0 = Instant::now();
        let mut c = ClientStream::new(settings(), None, 42, t0);
        let mut waits = Vec::new();
        for _ in 0..10 {
            c.handle_disconnected(t0);
            let until = c.poll_timeout().unwrap();
            assert!(!c.poll_connect(t0) || until == t0);
            assert!(c.poll_connect(until));
            waits.push(until - t0);
        }
        // Attempt n waits within [base/2, base] where base = 100ms * 2^(n-1), capped at 10s.
        for (n, w) in waits.iter().enumerate() {
            let base = Duration::from_millis(100)
                .saturating_mul(1 << n)
                .min(Duration::from_secs(10));
            assert!(
                *w >= base / 2 && *w <= base,
                "attempt {n}: {w:?} vs {base:?}"
            );
        }
        assert!(
            waits[9] >= Duration::from_secs(5),
            "capped at max, jittered"
        );
        // Two gateways with different seeds do not retry in lockstep.
        let mut d = ClientStream::new(settings(), None, 7, t0);
        for _ in 0..10 {
            d.handle_disconnected(t0);
        }
        assert_ne!(d.poll_timeout(), c.poll_timeout());

        c.handle_connected();
        c.poll_transmit();
        c.handle_update(update(1, 5, true, &[], false)).unwrap();
        c.handle_applied(Ok(()));
        c.handle_disconnected(t0);
        assert!(c.poll_timeout().unwrap() - t0 <= Duration::from_millis(100));
    }
}
