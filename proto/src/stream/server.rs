//! The control plane's end of one gateway's stream.
//!
//! It decides *what* to send next; the I/O layer builds it from the store.
//! At most one update is in flight: while it awaits its ACK, newer revisions
//! only move `head`, so any number of changes coalesce into the next delta
//! and a slow gateway costs one integer, never a queue.

use std::collections::VecDeque;

use super::StreamError;
use crate::pb::{self, watch_request::Message};

/// What the gateway said about itself in its Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub gateway_id: String,
    pub version: String,
    /// The revision it said it holds (0: none, or another store's).
    pub revision: u64,
}

/// Build an update for `nonce`: a delta from `from`, or a full snapshot when
/// `from` is `None`. The I/O layer reads the store in one transaction, sends
/// the revision it read, and reports it with `ServerStream::sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    pub nonce: u64,
    pub from: Option<u64>,
}

/// What the stream learned, for the gateways table and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Hello(Peer),
    Acked {
        revision: u64,
    },
    Nacked {
        revision: u64,
        rejected: Vec<pb::Rejection>,
    },
}

#[derive(Debug)]
pub struct ServerStream {
    store_id: String,
    peer: Option<Peer>,
    /// The revision the gateway serves, when it is one of this store's.
    held: Option<u64>,
    /// The newest revision the store is known to have.
    head: u64,
    /// The update awaiting ACK/NACK: nonce, and its revision once built.
    in_flight: Option<(u64, Option<u64>)>,
    /// The last revision the gateway refused; not offered again.
    refused: Option<u64>,
    next_nonce: u64,
    /// Whether anything was sent yet: the first update after Hello always
    /// goes out, even empty, so that the gateway knows it is current.
    answered: bool,
    events: VecDeque<Event>,
}

impl ServerStream {
    pub fn new(store_id: impl Into<String>, head: u64) -> Self {
        ServerStream {
            store_id: store_id.into(),
            peer: None,
            held: None,
            head,
            in_flight: None,
            refused: None,
            next_nonce: 1,
            answered: false,
            events: VecDeque::new(),
        }
    }

    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// The revision the gateway serves, as far as this stream knows.
    pub fn held(&self) -> Option<u64> {
        self.held
    }

    pub fn handle_request(&mut self, req: pb::WatchRequest) -> Result<(), StreamError> {
        match (req.message.ok_or(StreamError::Empty)?, &self.peer) {
            (Message::Hello(h), None) => {
                let id_ok = !h.gateway_id.is_empty()
                    && h.gateway_id.len() <= 128
                    && h.gateway_id.bytes().all(|b| b.is_ascii_graphic());
                if !id_ok {
                    return Err(StreamError::BadGatewayId);
                }
                // A revision of another store (or none) means: send everything.
                self.held = (h.store_id == self.store_id && h.revision > 0).then_some(h.revision);
                let peer = Peer {
                    gateway_id: h.gateway_id,
                    version: h.version,
                    revision: self.held.unwrap_or(0),
                };
                self.events.push_back(Event::Hello(peer.clone()));
                self.peer = Some(peer);
                Ok(())
            }
            (Message::Hello(_), Some(_)) => Err(StreamError::HelloTwice),
            (_, None) => Err(StreamError::HelloFirst),
            (Message::Ack(a), Some(_)) => {
                // An answer to anything but the update in flight is stale: ignore it.
                if let Some((nonce, Some(rev))) = self.in_flight
                    && nonce == a.nonce
                {
                    self.in_flight = None;
                    self.held = Some(rev);
                    self.events.push_back(Event::Acked { revision: rev });
                }
                Ok(())
            }
            (Message::Nack(n), Some(_)) => {
                if let Some((nonce, Some(rev))) = self.in_flight
                    && nonce == n.nonce
                {
                    self.in_flight = None;
                    self.refused = Some(rev);
                    self.events.push_back(Event::Nacked {
                        revision: rev,
                        rejected: n.rejected,
                    });
                }
                Ok(())
            }
        }
    }

    /// The store has (at least) this revision.
    pub fn handle_head(&mut self, revision: u64) {
        self.head = self.head.max(revision);
    }

    /// The next update to build, if one is due: never before Hello, never
    /// while one is in flight, never a revision the gateway already holds
    /// or refused, except that the first answer to Hello always goes out
    /// (an empty delta tells a current gateway that it is current, and a
    /// snapshot of an empty store lets a new gateway become ready).
    pub fn poll_send(&mut self) -> Option<Send> {
        self.peer.as_ref()?;
        if self.in_flight.is_some() {
            return None;
        }
        let due = !self.answered
            || match self.held.max(self.refused) {
                None => true,
                Some(floor) => self.head > floor,
            };
        if !due {
            return None;
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.in_flight = Some((nonce, None));
        self.answered = true;
        Some(Send {
            nonce,
            from: self.held,
        })
    }

    /// The update for `nonce` went out at `revision`.
    pub fn sent(&mut self, nonce: u64, revision: u64) {
        if let Some((n, r)) = &mut self.in_flight
            && *n == nonce
        {
            *r = Some(revision);
        }
        self.handle_head(revision);
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(store: &str, revision: u64) -> pb::WatchRequest {
        pb::WatchRequest {
            message: Some(Message::Hello(pb::Hello {
                gateway_id: "gw-1".into(),
                store_id: store.into(),
                revision,
                version: "test".into(),
            })),
        }
    }
    fn ack(nonce: u64, revision: u64) -> pb::WatchRequest {
        pb::WatchRequest {
            message: Some(Message::Ack(pb::Ack { nonce, revision })),
        }
    }
    fn nack(nonce: u64, revision: u64) -> pb::WatchRequest {
        pb::WatchRequest {
            message: Some(Message::Nack(pb::Nack {
                nonce,
                revision,
                rejected: vec![pb::Rejection {
                    resource: None,
                    reason: "no".into(),
                }],
            })),
        }
    }

    #[test]
    fn new_gateway_gets_a_snapshot_then_deltas_from_its_ack() {
        let mut s = ServerStream::new("store-a", 7);
        assert_eq!(s.poll_send(), None, "nothing before Hello");
        s.handle_request(hello("store-a", 0)).unwrap();
        assert!(matches!(s.poll_event(), Some(Event::Hello(p)) if p.revision == 0));
        let first = s.poll_send().unwrap();
        assert_eq!(first.from, None);
        s.sent(first.nonce, 7);
        assert_eq!(s.poll_send(), None, "one update in flight");

        // Changes while in flight coalesce into one later delta.
        s.handle_head(8);
        s.handle_head(9);
        s.handle_head(10);
        assert_eq!(s.poll_send(), None);
        s.handle_request(ack(first.nonce, 7)).unwrap();
        assert_eq!(s.poll_event(), Some(Event::Acked { revision: 7 }));
        let next = s.poll_send().unwrap();
        assert_eq!(next.from, Some(7));
        assert_ne!(next.nonce, first.nonce);
        s.sent(next.nonce, 10);
        s.handle_request(ack(next.nonce, 10)).unwrap();
        assert_eq!(s.held(), Some(10));
        assert_eq!(s.poll_send(), None, "up to date");
    }

    #[test]
    fn resume_from_a_held_revision_of_the_same_store() {
        let mut s = ServerStream::new("store-a", 12);
        s.handle_request(hello("store-a", 9)).unwrap();
        assert_eq!(s.poll_send().map(|x| x.from), Some(Some(9)));

        let mut other = ServerStream::new("store-a", 12);
        other.handle_request(hello("store-b", 9)).unwrap();
        assert_eq!(
            other.poll_send().map(|x| x.from),
            Some(None),
            "another store's revision gets a snapshot"
        );

        let mut current = ServerStream::new("store-a", 12);
        current.handle_request(hello("store-a", 12)).unwrap();
        let u = current.poll_send().unwrap();
        assert_eq!(u.from, Some(12), "an empty delta: you are current");
        current.sent(u.nonce, 12);
        current.handle_request(ack(u.nonce, 12)).unwrap();
        assert_eq!(current.poll_send(), None, "then nothing until a change");
        current.handle_head(13);
        assert_eq!(current.poll_send().map(|x| x.from), Some(Some(12)));
    }

    #[test]
    fn an_empty_store_still_sends_a_snapshot() {
        let mut s = ServerStream::new("store-a", 0);
        s.handle_request(hello("", 0)).unwrap();
        assert_eq!(s.poll_send().map(|x| x.from), Some(None));
    }

    #[test]
    fn a_refused_revision_is_not_offered_again() {
        let mut s = ServerStream::new("store-a", 5);
        s.handle_request(hello("store-a", 4)).unwrap();
        let u = s.poll_send().unwrap();
        s.sent(u.nonce, 5);
        s.handle_request(nack(u.nonce, 5)).unwrap();
        s.poll_event();
        assert!(matches!(
            s.poll_event(),
            Some(Event::Nacked { revision: 5, .. })
        ));
        assert_eq!(s.held(), Some(4), "the gateway still serves 4");
        assert_eq!(s.poll_send(), None, "5 is not offered again");
        s.handle_head(6);
        let fix = s.poll_send().unwrap();
        assert_eq!(
            fix.from,
            Some(4),
            "the next delta starts where the gateway is"
        );
    }

    #[test]
    fn stale_and_out_of_order_messages() {
        let mut s = ServerStream::new("store-a", 3);
        assert_eq!(s.handle_request(ack(1, 1)), Err(StreamError::HelloFirst));
        s.handle_request(hello("store-a", 0)).unwrap();
        assert_eq!(
            s.handle_request(hello("store-a", 0)),
            Err(StreamError::HelloTwice)
        );
        assert_eq!(
            s.handle_request(pb::WatchRequest { message: None }),
            Err(StreamError::Empty)
        );
        let u = s.poll_send().unwrap();
        s.sent(u.nonce, 3);
        s.handle_request(ack(u.nonce + 40, 3)).unwrap();
        assert_eq!(s.held(), None, "an ACK of an unknown nonce changes nothing");
        s.handle_request(ack(u.nonce, 3)).unwrap();
        assert_eq!(s.held(), Some(3));
    }

    #[test]
    fn gateway_ids_are_bounded() {
        let mut s = ServerStream::new("store-a", 0);
        let mut h = hello("store-a", 0);
        if let Some(Message::Hello(x)) = &mut h.message {
            x.gateway_id = "a b".into();
        }
        assert_eq!(s.handle_request(h), Err(StreamError::BadGatewayId));
    }
}
