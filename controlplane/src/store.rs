//! The store: every resource, the config revision, the change log, the audit
//! log, gateway status and tokens, in Postgres (production) or SQLite (the
//! embedded default), through one set of portable SQL statements (sqlx `Any`).
//!
//! Every write is one transaction that bumps the revision first (which, on
//! Postgres, also serializes writers so that revisions commit in order),
//! checks references, writes the resources, and appends to the change log
//! and the audit log. After commit the new revision is announced: in this
//! process through a `watch`, to other replicas through `NOTIFY`.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prost::Message as _;
use sqlx::{
    AnyConnection, AnyPool, Row, SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
    pool::PoolOptions,
};
use stoa_proto::{
    pb::{self, Kind, resource::Resource as R},
    rules::{self, FieldError},
};
use tokio::sync::{Mutex, watch};

/// The Postgres channel on which committed revisions are announced.
pub const NOTIFY_CHANNEL: &str = "stoa_config";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored resource {0} does not decode: {1}")]
    Corrupt(String, prost::DecodeError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Who makes a change, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub source: String,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            name: "system".into(),
            source: "control-plane".into(),
        }
    }
}

/// One change inside a write.
#[derive(Debug, Clone)]
pub enum Op {
    /// Refused with AlreadyExists if the resource exists.
    Create(pb::Resource),
    /// Refused with NotFound if it does not.
    Update(pb::Resource),
    /// Create or replace.
    Put(pb::Resource),
    /// Refused with NotFound if absent, FailedPrecondition while pointed at.
    Delete(pb::ResourceRef),
    /// An upstream's whole tool catalog.
    ReplaceTools {
        upstream: String,
        tools: Vec<pb::Tool>,
    },
}

/// What a snapshot or a delta holds, read at one revision.
#[derive(Debug, Default)]
pub struct Update {
    pub revision: u64,
    pub full: bool,
    pub upserts: Vec<pb::Resource>,
    pub removes: Vec<pb::ResourceRef>,
}

/// A gateway's status row (see `pb::GatewayStatus`).
pub type GatewayStatus = pb::GatewayStatus;

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    store_id: String,
    /// Writers in this process take turns (SQLite allows one writer; on
    /// Postgres the revision row lock orders writers across replicas too).
    write: Mutex<()>,
    head: watch::Sender<u64>,
    url: String,
    /// The last full snapshot built, shared by gateways that sync at the
    /// same revision (a fleet starting together costs one read, not N).
    full: Mutex<Option<Arc<Update>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("store_id", &self.store_id)
            .finish()
    }
}

fn migrator(backend: Backend) -> Migrator {
    let sql = match backend {
        Backend::Postgres => include_str!("../migrations/postgres/0001_init.sql"),
        Backend::Sqlite => include_str!("../migrations/sqlite/0001_init.sql"),
    };
    Migrator {
        migrations: Cow::Owned(vec![Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )]),
        ..Migrator::DEFAULT
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("OS random source");
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn kind_of(label: &str) -> Kind {
    Kind::from_label(label).unwrap_or(Kind::Unspecified)
}

fn decode(kind: &str, name: &str, body: &[u8]) -> Result<pb::Resource> {
    pb::Resource::decode(body).map_err(|e| StoreError::Corrupt(format!("{kind} {name:?}"), e))
}

fn audit_json(r: Option<&pb::Resource>) -> String {
    r.map(|r| serde_json::to_string(&r.redacted()).unwrap_or_default())
        .unwrap_or_default()
}

impl Store {
    /// Opens (creating an SQLite file if needed) and migrates the store,
    /// and makes sure it has an id and session keys.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::FailedPrecondition(format!(
                "database url must start with postgres:// or sqlite: (got {:?})",
                url.split(':').next().unwrap_or("")
            )));
        };
        let url = if backend == Backend::Sqlite && !url.contains("mode=") {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        } else {
            url.to_owned()
        };
        let max = if backend == Backend::Sqlite { 4 } else { 16 };
        let pool = PoolOptions::<sqlx::Any>::new()
            .max_connections(max)
            .connect(&url)
            .await?;
        migrator(backend).run(&pool).await?;

        // The store's id tells gateways whether their cached revision means anything here.
        let fresh = hex(&random_bytes::<8>());
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('store_id', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&fresh)
        .execute(&pool)
        .await?;
        let store_id: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'store_id'")
            .fetch_one(&pool)
            .await?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM config_revision WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        let store = Store {
            pool,
            backend,
            store_id,
            write: Mutex::new(()),
            head: watch::channel(revision as u64).0,
            url,
            full: Mutex::new(None),
        };
        if store.get(Kind::SessionKeys, "default").await?.is_none() {
            let keys = pb::SessionKeys {
                name: "default".into(),
                current: random_bytes::<32>().to_vec(),
                previous: vec![],
                ttl_seconds: 0,
            };
            // Two replicas starting together may both try: the loser finds it made.
            match store
                .apply(
                    &Actor::system(),
                    "create",
                    vec![Op::Create(R::SessionKeys(keys).into())],
                )
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The newest revision this process knows of.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Records that the store has (at least) this revision: from a commit
    /// here, a NOTIFY from another replica, or a poll.
    pub fn observe(&self, revision: u64) {
        self.head.send_if_modified(|h| {
            let newer = revision > *h;
            if newer {
                *h = revision;
            }
            newer
        });
    }

    pub async fn revision(&self) -> Result<u64> {
        let r: i64 = sqlx::query_scalar("SELECT revision FROM config_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(r as u64)
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Option<(pb::Resource, u64)>> {
        let row = sqlx::query("SELECT body, revision FROM resources WHERE kind = $1 AND name = $2")
            .bind(kind.label())
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let body: Vec<u8> = row.try_get(0)?;
            let rev: i64 = row.try_get(1)?;
            Ok((decode(kind.label(), name, &body)?, rev as u64))
        })
        .transpose()
    }

    /// Resources of one kind, ordered by name; `tenant` keeps that tenant's
    /// and shared ones; `upstream` keeps one upstream's tools.
    pub async fn list(
        &self,
        kind: Kind,
        tenant: Option<&str>,
        upstream: Option<&str>,
    ) -> Result<(Vec<pb::Resource>, u64)> {
        let mut tx = self.read_tx().await?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM config_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let prefix = upstream.map(|u| format!("{u}/"));
        let rows = sqlx::query(
            "SELECT name, body FROM resources WHERE kind = $1 \
             AND ($2 = '' OR tenant = $2 OR tenant = '') \
             AND ($3 = '' OR substr(name, 1, length($3)) = $3) ORDER BY name",
        )
        .bind(kind.label())
        .bind(tenant.unwrap_or(""))
        .bind(prefix.as_deref().unwrap_or(""))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0)?;
            let body: Vec<u8> = row.try_get(1)?;
            out.push(decode(kind.label(), &name, &body)?);
        }
        Ok((out, revision as u64))
    }

    /// A transaction that sees one consistent state of the store.
    async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// `update_since`, with full snapshots shared while the revision holds.
    pub async fn update_for(&self, from: Option<u64>) -> Result<Arc<Update>> {
        if let Some(f) = from {
            let up = self.update_since(Some(f)).await?;
            if !up.full {
                return Ok(Arc::new(up));
            }
        }
        let mut cached = self.full.lock().await;
        let head = self.revision().await?;
        if let Some(c) = cached.as_ref()
            && c.revision == head
        {
            return Ok(c.clone());
        }
        let up = Arc::new(self.update_since(None).await?);
        *cached = Some(up.clone());
        Ok(up)
    }

    /// What a gateway holding `from` needs to reach the current revision:
    /// a delta of the stream kinds changed since, or (for `None`, or a
    /// revision this store never had) a full snapshot.
    pub async fn update_since(&self, from: Option<u64>) -> Result<Update> {
        let mut tx = self.read_tx().await?;
        let head: i64 = sqlx::query_scalar("SELECT revision FROM config_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let head = head as u64;
        let mut up = Update {
            revision: head,
            ..Default::default()
        };
        match from {
            Some(from) if from <= head => {
                let rows = sqlx::query(
                    "SELECT c.kind, c.name, r.body FROM \
                     (SELECT DISTINCT kind, name FROM changes WHERE revision > $1 AND revision <= $2) c \
                     LEFT JOIN resources r ON r.kind = c.kind AND r.name = c.name \
                     ORDER BY c.kind, c.name",
                )
                .bind(from as i64)
                .bind(head as i64)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    let kind: String = row.try_get(0)?;
                    let name: String = row.try_get(1)?;
                    if !kind_of(&kind).on_stream() {
                        continue;
                    }
                    match row.try_get::<Option<Vec<u8>>, _>(2)? {
                        Some(body) => up.upserts.push(decode(&kind, &name, &body)?),
                        None => up.removes.push(pb::ResourceRef::new(kind_of(&kind), name)),
                    }
                }
            }
            _ => {
                up.full = true;
                let rows =
                    sqlx::query("SELECT kind, name, body FROM resources ORDER BY kind, name")
                        .fetch_all(&mut *tx)
                        .await?;
                for row in rows {
                    let kind: String = row.try_get(0)?;
                    if !kind_of(&kind).on_stream() {
                        continue;
                    }
                    let name: String = row.try_get(1)?;
                    let body: Vec<u8> = row.try_get(2)?;
                    up.upserts.push(decode(&kind, &name, &body)?);
                }
            }
        }
        tx.commit().await?;
        // Parents before children, so that a gateway can apply a large
        // snapshot chunk by chunk.
        up.upserts.sort_by_key(|r| r.kind().rank());
        Ok(up)
    }

    /// Applies `ops` as one revision. `action` names it in the audit log
    /// (`create`, `revoke`, …). Returns the revision and the resulting
    /// resources of the creates, updates and puts, in order.
    pub async fn apply(
        &self,
        actor: &Actor,
        action: &str,
        ops: Vec<Op>,
    ) -> Result<(u64, Vec<pb::Resource>)> {
        for op in &ops {
            match op {
                Op::Create(r) | Op::Update(r) | Op::Put(r) => rules::validate(r)?,
                Op::ReplaceTools { tools, .. } => {
                    for t in tools {
                        rules::validate(&R::Tool(t.clone()).into())?;
                    }
                }
                Op::Delete(_) => {}
            }
        }
        let _turn = self.write.lock().await;
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE config_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?;
        let mut w = Writer {
            c: &mut tx,
            revision,
            actor,
            action,
            at: now_ms(),
        };
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Create(r) => {
                    if w.load(r.kind(), &r.name()).await?.is_some() {
                        return Err(StoreError::AlreadyExists(format!(
                            "{} already exists",
                            r.reference()
                        )));
                    }
                    w.check_refs(&r).await?;
                    w.write(None, &r).await?;
                    out.push(r);
                }
                Op::Update(r) => {
                    let Some(before) = w.load(r.kind(), &r.name()).await? else {
                        return Err(StoreError::NotFound(format!("{} not found", r.reference())));
                    };
                    let r = keep_secrets(&before, r);
                    w.check_refs(&r).await?;
                    w.check_referrers(&r).await?;
                    w.write(Some(&before), &r).await?;
                    out.push(r);
                }
                Op::Put(r) => {
                    let before = w.load(r.kind(), &r.name()).await?;
                    w.check_refs(&r).await?;
                    if before.is_some() {
                        w.check_referrers(&r).await?;
                    }
                    w.write(before.as_ref(), &r).await?;
                    out.push(r);
                }
                Op::Delete(rf) => {
                    let kind = rf.kind();
                    let Some(before) = w.load(kind, &rf.name).await? else {
                        return Err(StoreError::NotFound(format!("{rf} not found")));
                    };
                    if kind == Kind::Upstream {
                        // Its catalog goes with it.
                        w.replace_tools(&rf.name, Vec::new()).await?;
                    }
                    let users = w.referrers(kind, &rf.name).await?;
                    if !users.is_empty() {
                        let shown: Vec<String> =
                            users.iter().take(5).map(|r| r.to_string()).collect();
                        return Err(StoreError::FailedPrecondition(format!(
                            "{rf} is still used by {}{}",
                            shown.join(", "),
                            if users.len() > 5 {
                                format!(" and {} more", users.len() - 5)
                            } else {
                                String::new()
                            }
                        )));
                    }
                    w.remove(&before).await?;
                }
                Op::ReplaceTools { upstream, tools } => {
                    if w.load(Kind::Upstream, &upstream).await?.is_none() {
                        return Err(StoreError::NotFound(format!(
                            "upstream {upstream:?} not found"
                        )));
                    }
                    w.replace_tools(&upstream, tools).await?;
                }
            }
        }
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        drop(_turn);
        self.observe(revision as u64);
        Ok((revision as u64, out))
    }

    pub async fn audit(&self, after_id: u64, limit: u32) -> Result<Vec<pb::AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, source, action, kind, name, before_json, after_json, revision \
             FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let kind: String = row.try_get(5)?;
                Ok(pb::AuditEntry {
                    id: row.try_get::<i64, _>(0)? as u64,
                    at_unix_ms: row.try_get(1)?,
                    actor: row.try_get(2)?,
                    source: row.try_get(3)?,
                    action: row.try_get(4)?,
                    resource: Some(pb::ResourceRef::new(
                        kind_of(&kind),
                        row.try_get::<String, _>(6)?,
                    )),
                    before_json: row.try_get(7)?,
                    after_json: row.try_get(8)?,
                    revision: row.try_get::<i64, _>(9)? as u64,
                })
            })
            .collect()
    }

    /// Writes a gateway's status row (whole).
    pub async fn put_gateway(&self, g: &GatewayStatus) -> Result<()> {
        // In turn with config writes: SQLite would otherwise make one of
        // them sleep in its busy handler.
        let _turn = self.write.lock().await;
        let nack = pb::Nack {
            nonce: 0,
            revision: g.last_nack_revision,
            rejected: g.last_nack.clone(),
        }
        .encode_to_vec();
        sqlx::query(
            "INSERT INTO gateways (gateway_id, version, address, control_plane, connected, revision, \
             connected_at_ms, last_seen_ms, last_ack_revision, last_ack_ms, last_nack_revision, last_nack_ms, last_nack) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (gateway_id) DO UPDATE SET version = excluded.version, address = excluded.address, \
             control_plane = excluded.control_plane, connected = excluded.connected, revision = excluded.revision, \
             connected_at_ms = excluded.connected_at_ms, last_seen_ms = excluded.last_seen_ms, \
             last_ack_revision = excluded.last_ack_revision, last_ack_ms = excluded.last_ack_ms, \
             last_nack_revision = excluded.last_nack_revision, last_nack_ms = excluded.last_nack_ms, \
             last_nack = excluded.last_nack",
        )
        .bind(&g.gateway_id)
        .bind(&g.version)
        .bind(&g.address)
        .bind(&g.control_plane)
        .bind(i64::from(g.connected))
        .bind(g.revision as i64)
        .bind(g.connected_at_unix_ms)
        .bind(g.last_seen_at_unix_ms)
        .bind(g.last_ack_revision as i64)
        .bind(g.last_ack_at_unix_ms)
        .bind(g.last_nack_revision as i64)
        .bind(g.last_nack_at_unix_ms)
        .bind(nack)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks every gateway this replica had as disconnected (at start-up,
    /// after a crash, their streams are gone).
    pub async fn disconnect_gateways_of(&self, control_plane: &str) -> Result<()> {
        let _turn = self.write.lock().await;
        sqlx::query(
            "UPDATE gateways SET connected = $1, control_plane = '' WHERE control_plane = $2",
        )
        .bind(0i64)
        .bind(control_plane)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn gateways(&self) -> Result<Vec<GatewayStatus>> {
        self.gateway_rows(None).await
    }

    pub async fn gateway(&self, id: &str) -> Result<Option<GatewayStatus>> {
        Ok(self.gateway_rows(Some(id)).await?.pop())
    }

    async fn gateway_rows(&self, id: Option<&str>) -> Result<Vec<GatewayStatus>> {
        let rows = sqlx::query(
            "SELECT gateway_id, version, address, control_plane, connected, revision, connected_at_ms, \
             last_seen_ms, last_ack_revision, last_ack_ms, last_nack_revision, last_nack_ms, last_nack \
             FROM gateways WHERE ($1 = '' OR gateway_id = $1) ORDER BY gateway_id",
        )
        .bind(id.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let nack: Vec<u8> = row.try_get(12)?;
                let nack = pb::Nack::decode(nack.as_slice()).unwrap_or_default();
                Ok(GatewayStatus {
                    gateway_id: row.try_get(0)?,
                    version: row.try_get(1)?,
                    address: row.try_get(2)?,
                    control_plane: row.try_get(3)?,
                    connected: row.try_get::<i64, _>(4)? != 0,
                    revision: row.try_get::<i64, _>(5)? as u64,
                    connected_at_unix_ms: row.try_get(6)?,
                    last_seen_at_unix_ms: row.try_get(7)?,
                    last_ack_revision: row.try_get::<i64, _>(8)? as u64,
                    last_ack_at_unix_ms: row.try_get(9)?,
                    last_nack_revision: row.try_get::<i64, _>(10)? as u64,
                    last_nack_at_unix_ms: row.try_get(11)?,
                    last_nack: nack.rejected,
                })
            })
            .collect()
    }

    /// Stores a token's hash under a role; an existing hash is kept.
    pub async fn add_token(&self, name: &str, role: &str, hash: &[u8; 32]) -> Result<()> {
        let _turn = self.write.lock().await;
        sqlx::query(
            "INSERT INTO tokens (hash, name, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.to_vec())
        .bind(name)
        .bind(role)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn has_tokens(&self, role: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens WHERE role = $1")
            .bind(role)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The name of the token with this hash and role, if there is one.
    pub async fn token(&self, hash: &[u8; 32], role: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM tokens WHERE hash = $1 AND role = $2")
                .bind(hash.to_vec())
                .bind(role)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

/// An update that leaves an upstream header value empty keeps the stored one:
/// the admin API never shows values, so a client cannot send them back.
fn keep_secrets(before: &pb::Resource, mut after: pb::Resource) -> pb::Resource {
    if let (Some(R::Upstream(b)), Some(R::Upstream(a))) = (&before.resource, &mut after.resource) {
        for (k, v) in a.headers.iter_mut() {
            if v.is_empty()
                && let Some(old) = b.headers.get(k)
            {
                v.clone_from(old);
            }
        }
    }
    after
}

/// The inside of one write transaction.
struct Writer<'a> {
    c: &'a mut AnyConnection,
    revision: i64,
    actor: &'a Actor,
    action: &'a str,
    at: i64,
}

impl Writer<'_> {
    async fn load(&mut self, kind: Kind, name: &str) -> Result<Option<pb::Resource>> {
        let body: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT body FROM resources WHERE kind = $1 AND name = $2")
                .bind(kind.label())
                .bind(name)
                .fetch_optional(&mut *self.c)
                .await?;
        body.map(|b| decode(kind.label(), name, &b)).transpose()
    }

    /// Everything `r` points at exists and belongs to its tenant (or is shared).
    async fn check_refs(&mut self, r: &pb::Resource) -> Result<()> {
        for rf in r.references() {
            let Some(target) = self.load(rf.kind(), &rf.name).await? else {
                return Err(StoreError::FailedPrecondition(format!(
                    "{}: {rf} does not exist",
                    r.reference()
                )));
            };
            let mine = r.tenant();
            if rf.kind() != Kind::Tenant
                && !mine.is_empty()
                && !target.tenant().is_empty()
                && target.tenant() != mine
            {
                return Err(StoreError::FailedPrecondition(format!(
                    "{}: {rf} belongs to tenant {:?}",
                    r.reference(),
                    target.tenant()
                )));
            }
        }
        Ok(())
    }

    /// A resource that changes tenant must stay usable by what points at it.
    async fn check_referrers(&mut self, r: &pb::Resource) -> Result<()> {
        if r.tenant().is_empty() || r.kind() == Kind::Tenant {
            return Ok(());
        }
        for user in self.referrers(r.kind(), &r.name()).await? {
            if let Some(u) = self.load(user.kind(), &user.name).await?
                && !u.tenant().is_empty()
                && u.tenant() != r.tenant()
            {
                return Err(StoreError::FailedPrecondition(format!(
                    "{} would belong to tenant {:?} but {user} of tenant {:?} uses it",
                    r.reference(),
                    r.tenant(),
                    u.tenant()
                )));
            }
        }
        Ok(())
    }

    async fn referrers(&mut self, kind: Kind, name: &str) -> Result<Vec<pb::ResourceRef>> {
        let rows = sqlx::query(
            "SELECT kind, name FROM resource_refs WHERE ref_kind = $1 AND ref_name = $2 ORDER BY kind, name",
        )
        .bind(kind.label())
        .bind(name)
        .fetch_all(&mut *self.c)
        .await?;
        rows.into_iter()
            .map(|row| {
                let k: String = row.try_get(0)?;
                Ok(pb::ResourceRef::new(
                    kind_of(&k),
                    row.try_get::<String, _>(1)?,
                ))
            })
            .collect()
    }

    async fn write(&mut self, before: Option<&pb::Resource>, r: &pb::Resource) -> Result<()> {
        let (kind, name) = (r.kind(), r.name());
        sqlx::query(
            "INSERT INTO resources (kind, name, tenant, body, revision) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (kind, name) DO UPDATE SET tenant = excluded.tenant, body = excluded.body, \
             revision = excluded.revision",
        )
        .bind(kind.label())
        .bind(&name)
        .bind(r.tenant())
        .bind(r.encode_to_vec())
        .bind(self.revision)
        .execute(&mut *self.c)
        .await?;
        self.set_refs(kind, &name, &r.references()).await?;
        let op = if before.is_some() { "update" } else { "create" };
        self.log(kind, &name, op, before, Some(r)).await
    }

    async fn remove(&mut self, before: &pb::Resource) -> Result<()> {
        let (kind, name) = (before.kind(), before.name());
        sqlx::query("DELETE FROM resources WHERE kind = $1 AND name = $2")
            .bind(kind.label())
            .bind(&name)
            .execute(&mut *self.c)
            .await?;
        self.set_refs(kind, &name, &[]).await?;
        self.log(kind, &name, "delete", Some(before), None).await
    }

    async fn set_refs(&mut self, kind: Kind, name: &str, refs: &[pb::ResourceRef]) -> Result<()> {
        sqlx::query("DELETE FROM resource_refs WHERE kind = $1 AND name = $2")
            .bind(kind.label())
            .bind(name)
            .execute(&mut *self.c)
            .await?;
        for rf in refs {
            sqlx::query(
                "INSERT INTO resource_refs (kind, name, ref_kind, ref_name) VALUES ($1, $2, $3, $4)",
            )
            .bind(kind.label())
            .bind(name)
            .bind(rf.kind().label())
            .bind(&rf.name)
            .execute(&mut *self.c)
            .await?;
        }
        Ok(())
    }

    async fn replace_tools(&mut self, upstream: &str, tools: Vec<pb::Tool>) -> Result<()> {
        let prefix = format!("{upstream}/");
        let rows = sqlx::query(
            "SELECT name, body FROM resources WHERE kind = 'tool' AND substr(name, 1, length($1)) = $1",
        )
        .bind(&prefix)
        .fetch_all(&mut *self.c)
        .await?;
        let mut old = std::collections::BTreeMap::new();
        for row in rows {
            let name: String = row.try_get(0)?;
            let body: Vec<u8> = row.try_get(1)?;
            old.insert(name.clone(), decode("tool", &name, &body)?);
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in tools {
            if t.upstream != upstream {
                return Err(FieldError {
                    field: "tool.upstream".into(),
                    reason: format!("{:?} is not {upstream:?}", t.upstream),
                }
                .into());
            }
            let r: pb::Resource = R::Tool(t).into();
            let name = r.name();
            if !seen.insert(name.clone()) {
                continue;
            }
            match old.get(&name) {
                Some(b) if *b == r => {}
                b => {
                    let b = b.cloned();
                    self.write(b.as_ref(), &r).await?;
                }
            }
        }
        for (name, b) in old {
            if !seen.contains(&name) {
                self.remove(&b).await?;
            }
        }
        Ok(())
    }

    /// Appends to the change log and the audit log.
    async fn log(
        &mut self,
        kind: Kind,
        name: &str,
        op: &str,
        before: Option<&pb::Resource>,
        after: Option<&pb::Resource>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO changes (revision, kind, name, op) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (revision, kind, name) DO UPDATE SET op = excluded.op",
        )
        .bind(self.revision)
        .bind(kind.label())
        .bind(name)
        .bind(op)
        .execute(&mut *self.c)
        .await?;
        let action = if self.action.is_empty() {
            op
        } else {
            self.action
        };
        sqlx::query(
            "INSERT INTO audit (at_ms, actor, source, action, kind, name, before_json, after_json, revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(self.at)
        .bind(&self.actor.name)
        .bind(&self.actor.source)
        .bind(action)
        .bind(kind.label())
        .bind(name)
        .bind(audit_json(before))
        .bind(audit_json(after))
        .bind(self.revision)
        .execute(&mut *self.c)
        .await?;
        Ok(())
    }
}
