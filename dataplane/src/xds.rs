//! The gateway's end of the config stream: I/O around
//! `stoa_proto::stream::client::ClientStream`. It connects to the control
//! plane, applies each revision to a copy of the current `Snapshot` and
//! installs it in one swap (or NACKs it and keeps serving the last good
//! one), keeps a cache file of what it applied, and reconnects with
//! jittered backoff when the stream breaks. Requests never wait on any of it:
//! it runs on its own thread (`spawn`), so that lowering a large snapshot
//! never occupies a request worker, and so that the memory of the chunks it
//! decodes is reused chunk after chunk by one thread's allocator heap.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use prost::Message as _;
use stoa_proto::{
    pb::{self, discovery_client::DiscoveryClient},
    stream::client::{ClientStream, Settings, Update},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{config::ControlPlane, gateway::Gateway, model::Snapshot};

/// Resolves `${VAR}` in upstream headers.
type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub struct Client {
    gw: Arc<Gateway>,
    cp: ControlPlane,
    token: String,
    machine: ClientStream,
    cache: Option<Cache>,
    current: Arc<Snapshot>,
    pending: Option<Pending>,
    env: Env,
}

impl Client {
    /// Loads the cache file (installing what it holds) and prepares the
    /// stream. `token` is the gateway token; `gateway_id` names this gateway.
    pub fn new(gw: Arc<Gateway>, cp: ControlPlane, token: String, gateway_id: String) -> Client {
        let env: Env = Arc::new(|n: &str| std::env::var(n).ok());
        let mut current = gw.runtime().snapshot.clone();
        let mut held = None;
        let cache = cp.cache_file.clone().map(Cache::new);
        if let Some(c) = &cache {
            match c.load(&*env) {
                Ok(Some((snap, store_id, revision))) => {
                    tracing::info!(revision, file = %c.path.display(), "serving the cached config until the control plane answers");
                    current = Arc::new(snap);
                    gw.install(current.clone());
                    gw.metrics.config_revision.set(revision as i64);
                    held = Some((store_id, revision));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(file = %c.path.display(), "config cache not used: {e}"),
            }
        }
        let mut seed = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .expect("OS random source");
        let settings = Settings {
            gateway_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            backoff_min: cp.backoff_min,
            backoff_max: cp.backoff_max,
            max_resources: cp.max_resources,
        };
        Client {
            machine: ClientStream::new(settings, held, u64::from_ne_bytes(seed), Instant::now()),
            gw,
            cp,
            token,
            cache,
            current,
            pending: None,
            env,
        }
    }

    /// Runs the client on a thread of its own (a single-threaded runtime)
    /// until `stop`.
    pub fn spawn(self, stop: CancellationToken) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("stoa-config".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the config stream");
                rt.block_on(self.run(stop));
            })
    }

    /// Runs until `stop`: connect, follow, reconnect.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            if let Some(at) = self.machine.poll_timeout() {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = stop.cancelled() => return,
                }
            }
            if !self.machine.poll_connect(Instant::now()) {
                continue;
            }
            let outcome = tokio::select! {
                r = self.follow() => r,
                _ = stop.cancelled() => return,
            };
            self.gw.metrics.control_plane_connected.set(0);
            // Half a revision is never served.
            self.pending = None;
            if let Err(e) = outcome {
                tracing::warn!(
                    url = %self.cp.url,
                    revision = self.machine.held().map(|h| h.1).unwrap_or(0),
                    "config stream: {e}; serving the last good config and reconnecting"
                );
            }
            self.machine.handle_disconnected(Instant::now());
        }
    }

    /// One stream, from connect until it breaks.
    async fn follow(&mut self) -> Result<(), String> {
        let channel: Channel = Endpoint::from_shared(self.cp.url.clone())
            .map_err(|e| format!("control_plane.url: {e}"))?
            .connect_timeout(self.cp.connect_timeout)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| format!("connecting: {}", source_chain(&e)))?;
        let mut client =
            DiscoveryClient::new(channel).max_decoding_message_size(self.cp.max_message_bytes);
        self.machine.handle_connected();
        let (tx, rx) = mpsc::channel(4);
        self.flush(&tx).await;
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        let mut auth = MetadataValue::try_from(format!("Bearer {}", self.token))
            .map_err(|_| "the gateway token is not a valid header value".to_owned())?;
        auth.set_sensitive(true);
        req.metadata_mut().insert("authorization", auth);
        let mut inbound = client
            .watch(req)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        self.gw.metrics.control_plane_connected.set(1);
        loop {
            let msg = inbound
                .message()
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .ok_or("the control plane closed the stream")?;
            self.gw
                .metrics
                .config_bytes
                .inc_by(msg.encoded_len() as u64);
            let chunk = self.machine.handle_update(msg).map_err(|e| {
                self.pending = None;
                e.to_string()
            })?;
            if let Some(result) = self.apply(chunk) {
                self.machine.handle_applied(result);
                self.flush(&tx).await;
            }
        }
    }

    async fn flush(&mut self, tx: &mpsc::Sender<pb::WatchRequest>) {
        while let Some(m) = self.machine.poll_transmit() {
            // The stream's receiver lives as long as the call; a send error
            // means the stream is ending, which `follow` notices next.
            let _ = tx.send(m).await;
        }
    }

    /// Applies one chunk on top of the chunks before it; after the last one,
    /// installs the revision (or refuses it) and returns the answer. Each
    /// chunk is lowered as it arrives, so a large snapshot is never held
    /// whole as wire types.
    fn apply(&mut self, u: Update) -> Option<Result<(), Vec<pb::Rejection>>> {
        let size = u.upserts.len() + u.removes.len();
        let (revision, full, last) = (u.revision, u.full, u.last);
        if u.first {
            let base = if full {
                Snapshot::default()
            } else {
                (*self.current).clone()
            };
            self.pending = Some(Pending {
                snap: base,
                rejected: Vec::new(),
                record: Vec::new(),
                spool: None,
                resources: 0,
                started: Instant::now(),
            });
        }
        let Some(mut p) = self.pending.take() else {
            // A chunk without its first: the machine prevents this.
            return last.then(|| Err(vec![rejection("chunk without its revision".into())]));
        };
        // Encoded for the cache file before the resources move into the model.
        let mut msg = pb::ConfigUpdate {
            store_id: u.store_id,
            revision,
            nonce: 0,
            full,
            upserts: u.upserts,
            removes: u.removes,
            more: !last,
        };
        if let Some(cache) = &self.cache {
            if !full {
                msg.encode_length_delimited(&mut p.record)
                    .expect("a Vec grows as needed");
            } else {
                // A snapshot goes to disk chunk by chunk, not into memory.
                if u.first {
                    p.spool = cache
                        .begin()
                        .map_err(|e| tracing::warn!(file = %cache.path.display(), "config cache not written: {e}"))
                        .ok();
                }
                if let Some(spool) = &mut p.spool
                    && let Err(e) = spool.write(&msg.encode_length_delimited_to_vec())
                {
                    tracing::warn!(file = %cache.path.display(), "config cache not written: {e}");
                    p.spool = None;
                }
            }
        }
        let (upserts, removes) = (
            std::mem::take(&mut msg.upserts),
            std::mem::take(&mut msg.removes),
        );
        let (snap, rejected) = p.snap.apply_owned(upserts, removes, &*self.env);
        p.snap = snap;
        p.rejected.extend(rejected);
        p.resources += size;
        if !last {
            self.pending = Some(p);
            return None;
        }
        if !p.rejected.is_empty() {
            for r in &p.rejected {
                tracing::error!(revision, "{r}");
            }
            tracing::warn!(
                revision,
                rejected = p.rejected.len(),
                "config revision refused; serving the last good one"
            );
            self.gw
                .metrics
                .config_updates
                .with_label_values(&["rejected"])
                .inc();
            return Some(Err(p.rejected.iter().map(pb::Rejection::from).collect()));
        }
        self.current = Arc::new(p.snap);
        self.gw.install(self.current.clone());
        self.gw.metrics.config_revision.set(revision as i64);
        self.gw
            .metrics
            .config_updates
            .with_label_values(&["applied"])
            .inc();
        tracing::info!(revision, full, resources = p.resources, keys = self.current.keys.len(), took = ?p.started.elapsed(), "config revision applied");
        if let Some(cache) = &mut self.cache {
            let written = match (full, p.spool.take()) {
                (true, Some(spool)) => cache.commit(spool),
                (true, None) => Ok(()),
                (false, _) => cache.append(&p.record),
            };
            if let Err(e) = written {
                tracing::warn!(file = %cache.path.display(), "config cache not written: {e}");
            }
        }
        Some(Ok(()))
    }
}

/// A revision being received: the snapshot its chunks build, and what they
/// refused, and their encoding for the cache file (a delta in memory, a
/// snapshot spooled to disk).
struct Pending {
    snap: Snapshot,
    rejected: Vec<crate::model::Rejected>,
    record: Vec<u8>,
    spool: Option<Spool>,
    resources: usize,
    started: Instant,
}

fn rejection(reason: String) -> pb::Rejection {
    pb::Rejection {
        resource: None,
        reason,
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The cache file: length-delimited `ConfigUpdate`s, a full snapshot
/// followed by the deltas applied since. A new full snapshot rewrites it;
/// when the deltas outgrow the snapshot it is folded back into one.
pub struct Cache {
    path: PathBuf,
    base_len: u64,
    len: u64,
}

impl Cache {
    pub fn new(path: PathBuf) -> Cache {
        Cache {
            path,
            base_len: 0,
            len: 0,
        }
    }

    /// The snapshot the file holds, with its store and revision.
    pub fn load(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(Snapshot, String, u64)>, String> {
        let Some(updates) = read_updates(&self.path)? else {
            return Ok(None);
        };
        let (resources, store_id, revision) = fold(updates)?;
        let (snap, rejected) = Snapshot::default().apply(true, resources, Vec::new(), env);
        if let Some(r) = rejected.first() {
            return Err(format!("it holds a resource this gateway refuses: {r}"));
        }
        Ok(Some((snap, store_id, revision)))
    }

    /// Starts writing a snapshot beside the cache file.
    fn begin(&self) -> std::io::Result<Spool> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("partial");
        Ok(Spool {
            file: std::io::BufWriter::new(std::fs::File::create(&tmp)?),
            tmp,
            len: 0,
        })
    }

    /// The spooled snapshot becomes the cache file, atomically.
    fn commit(&mut self, mut spool: Spool) -> std::io::Result<()> {
        spool.file.flush()?;
        spool.file.get_ref().sync_all()?;
        std::fs::rename(&spool.tmp, &self.path)?;
        self.base_len = spool.len;
        self.len = spool.len;
        Ok(())
    }

    /// Appends a delta. With no snapshot on file (its spool failed) there
    /// is nothing a delta could follow, and nothing is written.
    fn append(&mut self, encoded: &[u8]) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        f.write_all(encoded)?;
        self.len += encoded.len() as u64;
        if self.len > 2 * self.base_len + (1 << 20) {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> std::io::Result<()> {
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let updates = read_updates(&self.path).map_err(bad)?.unwrap_or_default();
        let (upserts, store_id, revision) = fold(updates).map_err(bad)?;
        let one = pb::ConfigUpdate {
            store_id,
            revision,
            nonce: 0,
            full: true,
            upserts,
            removes: vec![],
            more: false,
        }
        .encode_length_delimited_to_vec();
        write_atomically(&self.path, &one)?;
        self.base_len = one.len() as u64;
        self.len = self.base_len;
        Ok(())
    }
}

/// A snapshot being written beside the cache file; dropped unfinished, it
/// removes itself.
struct Spool {
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    len: u64,
}

impl Spool {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        // After a commit the file was renamed away and this finds nothing.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn read_updates(path: &Path) -> Result<Option<Vec<pb::ConfigUpdate>>, String> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(|e| e.to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut buf = bytes.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(pb::ConfigUpdate::decode_length_delimited(&mut buf).map_err(|e| e.to_string())?);
    }
    Ok(Some(out))
}

/// Replays updates into the resources they leave, with the last revision.
fn fold(updates: Vec<pb::ConfigUpdate>) -> Result<(Vec<pb::Resource>, String, u64), String> {
    let mut all: std::collections::BTreeMap<(i32, String), pb::Resource> = Default::default();
    let mut at: Option<(String, u64)> = None;
    // The update the last record belongs to is not finished yet.
    let mut open = false;
    for (i, u) in updates.into_iter().enumerate() {
        if u.full && !open {
            // A snapshot starts: what came before no longer counts.
            all.clear();
        } else {
            match &at {
                Some((store, rev)) if *store == u.store_id && u.revision >= *rev => {}
                None if i == 0 => return Err("it does not start with a full snapshot".into()),
                _ => return Err("its updates do not follow one another".into()),
            }
        }
        at = Some((u.store_id.clone(), u.revision));
        open = u.more;
        for rf in u.removes {
            all.remove(&(rf.kind, rf.name));
        }
        for r in u.upserts {
            all.insert((r.kind() as i32, r.name()), r);
        }
    }
    if open {
        return Err("its last update is incomplete".into());
    }
    let (store_id, revision) = at.ok_or("empty")?;
    Ok((all.into_values().collect(), store_id, revision))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::pb::resource::Resource as R;

    fn tenant(n: &str) -> pb::Resource {
        R::Tenant(pb::Tenant {
            name: n.into(),
            display_name: String::new(),
        })
        .into()
    }

    fn chunk(revision: u64, full: bool, up: &[&str], more: bool) -> Vec<u8> {
        let mut m =
            pb::ConfigUpdate::decode_length_delimited(update(revision, full, up, &[]).as_slice())
                .unwrap();
        m.more = more;
        m.encode_length_delimited_to_vec()
    }

    fn update(revision: u64, full: bool, up: &[&str], rm: &[&str]) -> Vec<u8> {
        pb::ConfigUpdate {
            store_id: "s".into(),
            revision,
            nonce: 0,
            full,
            upserts: up.iter().map(|n| tenant(n)).collect(),
            removes: rm
                .iter()
                .map(|n| pb::ResourceRef::new(pb::Kind::Tenant, *n))
                .collect(),
            more: false,
        }
        .encode_length_delimited_to_vec()
    }

    fn put_full(c: &mut Cache, encoded: &[u8]) {
        let mut spool = c.begin().unwrap();
        spool.write(encoded).unwrap();
        c.commit(spool).unwrap();
    }

    #[test]
    fn the_cache_replays_a_snapshot_and_its_deltas() {
        let dir = std::env::temp_dir().join(format!("stoa-cache-{}", std::process::id()));
        let path = dir.join("config.bin");
        let _ = std::fs::remove_file(&path);
        let env = |_: &str| None;
        let mut c = Cache::new(path.clone());
        assert!(c.load(&env).unwrap().is_none(), "no file: nothing cached");
        put_full(&mut c, &update(5, true, &["a", "b"], &[]));
        c.append(&update(6, false, &["c"], &["a"])).unwrap();
        let (snap, store, rev) = c.load(&env).unwrap().unwrap();
        assert_eq!((store.as_str(), rev), ("s", 6));
        let names: Vec<&str> = snap.tenants.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["b", "c"]);

        c.compact().unwrap();
        let (snap2, _, rev2) = c.load(&env).unwrap().unwrap();
        assert_eq!(rev2, 6);
        assert_eq!(snap2.tenants, snap.tenants);

        // A snapshot in chunks, then a delta.
        let mut two = chunk(7, true, &["x"], true);
        two.extend(chunk(7, true, &["y"], false));
        put_full(&mut c, &two);
        c.append(&update(8, false, &["z"], &["x"])).unwrap();
        let (snap, _, rev) = c.load(&env).unwrap().unwrap();
        let names: Vec<&str> = snap.tenants.iter().map(|t| t.as_str()).collect();
        assert_eq!((names, rev), (vec!["y", "z"], 8));
        // A snapshot spooled chunk by chunk replaces the file only when
        // committed; an unfinished one leaves no trace.
        let mut spool = c.begin().unwrap();
        spool.write(&chunk(10, true, &["p"], true)).unwrap();
        drop(spool);
        assert!(!path.with_extension("partial").exists());
        assert_eq!(c.load(&env).unwrap().unwrap().2, 8, "the old cache stands");
        let mut spool = c.begin().unwrap();
        spool.write(&chunk(11, true, &["p"], true)).unwrap();
        spool.write(&chunk(11, true, &["q"], false)).unwrap();
        c.commit(spool).unwrap();
        let (snap, _, rev) = c.load(&env).unwrap().unwrap();
        assert_eq!((snap.tenants.len(), rev), (2, 11));

        // A torn write (a chunk without its end) is refused.
        std::fs::write(&path, chunk(9, true, &["x"], true)).unwrap();
        assert!(c.load(&env).is_err());

        std::fs::write(&path, b"\x05garbage").unwrap();
        assert!(
            c.load(&env).is_err(),
            "a damaged file is refused, not half-used"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
