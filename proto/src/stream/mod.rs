//! The config stream's two ends as sans-IO state machines: plain structs fed
//! with `handle_*` and read with `poll_*`, so that every rule (revisions,
//! nonces, ACK/NACK, resume, coalescing, chunking, backoff) is tested without
//! sockets, tasks or sleeps. See `proto/stoa/v1/discovery.proto`.

pub mod client;
pub mod server;

/// A peer broke the protocol; the stream is dropped (and, for a gateway,
/// reopened after a backoff).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the first message on a stream must be Hello")]
    HelloFirst,
    #[error("Hello sent twice on one stream")]
    HelloTwice,
    #[error("an empty message")]
    Empty,
    #[error("gateway_id must be 1..=128 printable ASCII characters")]
    BadGatewayId,
    #[error("update {nonce} arrived while update {pending} was still being assembled")]
    Interleaved { nonce: u64, pending: u64 },
    #[error("update {nonce} changed revision or store between chunks")]
    ChunkMismatch { nonce: u64 },
    #[error("a delta arrived before any full snapshot")]
    DeltaWithoutBase,
    #[error("update {nonce} would go from revision {held} back to {revision}")]
    Backwards {
        nonce: u64,
        held: u64,
        revision: u64,
    },
    #[error("update {nonce} holds more than {limit} resources")]
    TooLarge { nonce: u64, limit: usize },
}
