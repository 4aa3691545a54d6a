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
use tokio::sync::mpsc;
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
        let outcome: Result<(), Status> = async {
            loop {
                if let Some(send) = machine.poll_send() {
                    let up = self
                        .store
                        .update_since(send.from)
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    machine.sent(send.nonce, up.revision);
                    for chunk in chunks(
                        up,
                        send.nonce,
                        self.store.store_id(),
                        self.settings.max_chunk_bytes,
                    ) {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                while let Some(ev) = machine.poll_event() {
                    self.record(&mut status, ev).await;
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
                let known = self
                    .store
                    .gateways()
                    .await
                    .ok()
                    .and_then(|all| all.into_iter().find(|g| g.gateway_id == peer.gateway_id));
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
            if let Err(e) = self.store.put_gateway(s).await {
                tracing::warn!(gateway = %s.gateway_id, "gateway status not saved: {e}");
            }
        }
    }
}

/// Cuts an update into messages of at most about `max_bytes` each; removes
/// ride in the last one. Every chunk carries the nonce and revision; all but
/// the last have `more` set.
fn chunks(
    up: store::Update,
    nonce: u64,
    store_id: &str,
    max_bytes: usize,
) -> Vec<pb::ConfigUpdate> {
    let empty = |upserts| pb::ConfigUpdate {
        store_id: store_id.to_owned(),
        revision: up.revision,
        nonce,
        full: up.full,
        upserts,
        removes: vec![],
        more: true,
    };
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for r in up.upserts {
        let n = r.encoded_len() + 8;
        if size + n > max_bytes && !current.is_empty() {
            out.push(empty(std::mem::take(&mut current)));
            size = 0;
        }
        size += n;
        current.push(r);
    }
    let mut last = empty(current);
    last.removes = up.removes;
    last.more = false;
    out.push(last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::pb::resource::Resource as R;

    #[test]
    fn chunks_respect_the_byte_budget_and_end_once() {
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
        let out = chunks(up, 3, "s", 1000);
        assert!(out.len() > 10);
        assert!(
            out.iter()
                .all(|c| c.encoded_len() <= 1100 && c.nonce == 3 && c.revision == 9)
        );
        assert_eq!(out.iter().filter(|c| !c.more).count(), 1);
        assert!(!out.last().unwrap().more);
        assert_eq!(out.last().unwrap().removes.len(), 1);
        assert_eq!(out.iter().map(|c| c.upserts.len()).sum::<usize>(), 100);

        let empty = chunks(store::Update::default(), 1, "s", 1000);
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more);
    }
}
