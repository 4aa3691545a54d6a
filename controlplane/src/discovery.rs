//! The config stream's server: one task per connected gateway drives a
//! `stoa_proto::stream::server::ServerStream` with what the gateway sends
//! and with the store's head revision, builds what the machine asks for
//! from the store, and keeps the gateway's status row current.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use prost::Message as _;
use stoa_proto::{
    pb::{self, discovery_server::Discovery},
    stream::server::{Event, ServerStream},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth,
    store::{self, Store},
};

/// How the server cuts and paces updates.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Largest chunk of an update, in encoded bytes (below the gateway's
    /// gRPC message limit).
    pub max_chunk_bytes: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_chunk_bytes: 1 << 20,
        }
    }
}

pub struct DiscoveryService {
    pub store: Arc<Store>,
    /// This control-plane replica's id, shown in the gateways table.
    pub replica: String,
    pub settings: StreamSettings,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let who = auth::caller(&self.store, &req, auth::GATEWAY).await?;
        let inbound = req.into_inner();
        // Two chunks of buffer: the task waits on the gateway (HTTP/2 flow
        // control) rather than queueing.
        let (tx, rx) = mpsc::channel(2);
        let driver = Driver {
            store: self.store.clone(),
            replica: self.replica.clone(),
            settings: self.settings.clone(),
            address: who.source,
        };
        tokio::spawn(driver.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Driver {
    store: Arc<Store>,
    replica: String,
    settings: StreamSettings,
    address: String,
}

impl Driver {
    async fn run(
        self,
        mut inbound: Streaming<pb::WatchRequest>,
        tx: mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
    ) {
        let mut head = self.store.head();
        let mut machine = ServerStream::new(self.store.store_id(), *head.borrow_and_update());
        let mut status: Option<pb::GatewayStatus> = None;
        // The status row is written by its own task, latest state first:
        // the database never sits between a change and the next update.
        let (status_tx, status_rx) = watch::channel(None::<pb::GatewayStatus>);
        let writer = tokio::spawn(write_status(self.store.clone(), status_rx));
        let outcome: Result<(), Status> = async {
            loop {
                if let Some(send) = machine.poll_send() {
                    let up = self
                        .store
                        .update_for(send.from)
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    machine.sent(send.nonce, up.revision);
                    let bounds = chunk_bounds(&up, self.settings.max_chunk_bytes);
                    let n = bounds.len();
                    for (i, range) in bounds.into_iter().enumerate() {
                        let chunk = pb::ConfigUpdate {
                            store_id: self.store.store_id().to_owned(),
                            revision: up.revision,
                            nonce: send.nonce,
                            full: up.full,
                            upserts: up.upserts[range].to_vec(),
                            removes: if i + 1 == n {
                                up.removes.clone()
                            } else {
                                vec![]
                            },
                            more: i + 1 < n,
                        };
                        // Built one at a time: a snapshot is never copied whole.
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                while let Some(ev) = machine.poll_event() {
                    self.record(&mut status, ev).await;
                    status_tx.send_replace(status.clone());
                }
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => machine
                            .handle_request(m)
                            .map_err(|e| Status::invalid_argument(e.to_string()))?,
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    },
                    changed = head.changed() => {
                        if changed.is_err() {
                            return Err(Status::unavailable("control plane shutting down"));
                        }
                        machine.handle_head(*head.borrow_and_update());
                    }
                    _ = tx.closed() => return Ok(()),
                }
            }
        }
        .await;
        if let Err(e) = &outcome {
            tracing::info!(gateway = ?status.as_ref().map(|s| &s.gateway_id), "config stream ended: {e}");
            let _ = tx.send(Err(e.clone())).await;
        }
        // The last word: written after whatever the writer had pending.
        drop(status_tx);
        let _ = writer.await;
        if let Some(mut s) = status {
            s.connected = false;
            s.last_seen_at_unix_ms = store::now_ms();
            if let Err(e) = self.store.put_gateway(&s).await {
                tracing::warn!(gateway = %s.gateway_id, "gateway status not saved: {e}");
            }
            tracing::info!(gateway = %s.gateway_id, revision = s.revision, "gateway disconnected");
        }
    }

    async fn record(&self, status: &mut Option<pb::GatewayStatus>, ev: Event) {
        let now = store::now_ms();
        match ev {
            Event::Hello(peer) => {
                // Keep what we knew of this gateway (its last NACK) across reconnects.
                let known = self.store.gateway(&peer.gateway_id).await.ok().flatten();
                let mut s = known.unwrap_or_default();
                s.gateway_id = peer.gateway_id;
                s.version = peer.version;
                s.address = self.address.clone();
                s.control_plane = self.replica.clone();
                s.connected = true;
                s.revision = peer.revision;
                s.connected_at_unix_ms = now;
                tracing::info!(gateway = %s.gateway_id, revision = s.revision, address = %s.address, "gateway connected");
                *status = Some(s);
            }
            Event::Acked { revision } => {
                if let Some(s) = status {
                    s.revision = revision;
                    s.last_ack_revision = revision;
                    s.last_ack_at_unix_ms = now;
                    if s.last_nack_revision < revision {
                        s.last_nack.clear();
                        s.last_nack_revision = 0;
                        s.last_nack_at_unix_ms = 0;
                    }
                    tracing::debug!(gateway = %s.gateway_id, revision, "ACK");
                }
            }
            Event::Nacked { revision, rejected } => {
                if let Some(s) = status {
                    tracing::warn!(gateway = %s.gateway_id, revision, "NACK: {}", auth::summary(&rejected));
                    s.last_nack_revision = revision;
                    s.last_nack_at_unix_ms = now;
                    s.last_nack = rejected;
                }
            }
        }
        if let Some(s) = status {
            s.last_seen_at_unix_ms = now;
        }
    }
}

/// Writes the newest status a stream published, skipping states that a
/// newer one replaced meanwhile.
async fn write_status(store: Arc<Store>, mut rx: watch::Receiver<Option<pb::GatewayStatus>>) {
    while rx.changed().await.is_ok() {
        let Some(s) = rx.borrow_and_update().clone() else {
            continue;
        };
        if let Err(e) = store.put_gateway(&s).await {
            tracing::warn!(gateway = %s.gateway_id, "gateway status not saved: {e}");
        }
    }
}

/// Where to cut an update's upserts so that each message holds at most
/// about `max_bytes`; removes ride in the last one. Always at least one
/// (possibly empty) chunk.
fn chunk_bounds(up: &store::Update, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, r) in up.upserts.iter().enumerate() {
        let n = r.encoded_len() + 8;
        if size + n > max_bytes && i > start {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += n;
    }
    out.push(start..up.upserts.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::pb::resource::Resource as R;

    #[test]
    fn chunks_respect_the_byte_budget_and_cover_everything() {
        let up = store::Update {
            revision: 9,
            full: true,
            upserts: (0..100)
                .map(|i| {
                    R::Tenant(pb::Tenant {
                        name: format!("tenant-{i:03}"),
                        display_name: "x".repeat(100),
                    })
                    .into()
                })
                .collect(),
            removes: vec![pb::ResourceRef::new(pb::Kind::Tenant, "gone")],
        };
        let out = chunk_bounds(&up, 1000);
        assert!(out.len() > 10);
        for r in &out {
            let bytes: usize = up.upserts[r.clone()]
                .iter()
                .map(|x| x.encoded_len() + 8)
                .sum();
            assert!(bytes <= 1000, "{bytes}");
        }
        assert_eq!(out.iter().map(|r| r.len()).sum::<usize>(), 100);
        assert_eq!(out.last().unwrap().end, 100);

        let empty = chunk_bounds(&store::Update::default(), 1000);
        assert_eq!(empty, vec![0..0]);
    }
}
