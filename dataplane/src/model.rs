//! The in-memory model the request path reads: an immutable `Snapshot` of
//! tenants, plans, upstreams, subscriptions, policies, API keys and session
//! keys, indexed for lookups.
//!
//! Both sources lower into it the same way: the control plane's config
//! stream sends `stoa.v1.Resource`s (`Snapshot::apply`), and the config file
//! is first turned into those same resources (`resources_from_file`). A
//! resource that cannot be accepted is rejected with its reason; the caller
//! decides whether the rest stands (the file: yes; the stream: the whole
//! revision is refused and the last good one kept).
//!
//! Applying a delta is proportional to the delta when only keys change
//! (the common case: a key made or revoked); a change to a tenant, upstream,
//! subscription, plan or policy recomputes every key's grants. Keys with the
//! same tenant and subscriptions share one `Grants`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::Arc,
};

use http::{HeaderName, HeaderValue, Uri};
use stoa_proto::{
    pb::{self, Kind, resource::Resource as R},
    rules,
};

use crate::config::FileConfig;

/// `[a-z0-9][a-z0-9-]{0,31}`: safe in paths, metric labels and tool-name prefixes,
/// and never contains the `__` that separates aggregated names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamName(Arc<str>);

impl UpstreamName {
    pub const MAX_LEN: usize = rules::UPSTREAM_NAME_MAX;

    pub fn parse(s: &str) -> Result<Self, String> {
        rules::upstream_name(s).map(|()| UpstreamName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, shared (no copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

/// Maps keyed by name are looked up with the `&str` of a request path, with
/// no copy: the derived order, equality and hash are those of the text.
impl std::borrow::Borrow<str> for UpstreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, String> {
        rules::name(s)
            .map(|()| TenantId(s.into()))
            .map_err(|e| format!("tenant name {e}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The public part of an API key: `stoa_<prefix>_<secret>`, 8 of `[A-Za-z0-9]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPrefix([u8; 8]);

impl KeyPrefix {
    pub fn parse(s: &str) -> Result<Self, String> {
        rules::key_prefix(s)?;
        let mut p = [0; 8];
        p.copy_from_slice(s.as_bytes());
        Ok(KeyPrefix(p))
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII at construction")
    }
}

/// Which tools of one upstream a key may see and call: what its
/// subscriptions allow, minus what its tenant's policies deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolFilter {
    /// `None`: every tool.
    allow: Option<BTreeSet<String>>,
    /// Exact names, or prefixes when they end in `*`.
    deny: Vec<String>,
}

impl ToolFilter {
    pub fn all() -> Self {
        ToolFilter {
            allow: None,
            deny: Vec::new(),
        }
    }

    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(tools: I) -> Self {
        ToolFilter {
            allow: Some(tools.into_iter().map(Into::into).collect()),
            deny: Vec::new(),
        }
    }

    fn from_list(tools: &[String]) -> Self {
        if tools.iter().any(|t| t == "*") {
            Self::all()
        } else {
            Self::only(tools.iter().cloned())
        }
    }

    /// Every tool passes (no list to filter by).
    pub fn is_all(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    pub fn allows(&self, tool: &str) -> bool {
        let allowed = self.allow.as_ref().is_none_or(|a| a.contains(tool));
        allowed
            && !self.deny.iter().any(|d| match d.strip_suffix('*') {
                Some(prefix) => tool.starts_with(prefix),
                None => d == tool,
            })
    }

    fn union(&mut self, other: &ToolFilter) {
        match (&mut self.allow, &other.allow) {
            (None, _) => {}
            (_, None) => self.allow = None,
            (Some(a), Some(b)) => a.extend(b.iter().cloned()),
        }
    }
}

pub struct Upstream {
    pub name: UpstreamName,
    pub url: Uri,
    pub tenant: Option<TenantId>,
    /// Credentials injected on every request; marked sensitive so hyper and
    /// our logs never print them.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub tenant: Option<TenantId>,
    pub requests_per_minute: u64,
    pub requests_per_day: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub name: String,
    pub tenant: TenantId,
    pub upstream: UpstreamName,
    pub filter: ToolFilter,
    pub plan: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub tenant: TenantId,
    pub upstream: Option<UpstreamName>,
    pub deny_tools: Vec<String>,
}

/// Session-sealing keys pushed by the control plane.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub current: [u8; 32],
    pub previous: Vec<[u8; 32]>,
    pub ttl_secs: u64,
}

impl fmt::Debug for SessionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSpec")
            .field("previous", &self.previous.len())
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// Upstream → tools: the union of a key's subscriptions, narrowed by its
/// tenant's policies.
pub type Grants = BTreeMap<UpstreamName, ToolFilter>;

#[derive(Debug)]
pub struct ApiKey {
    pub name: Box<str>,
    pub prefix: KeyPrefix,
    pub tenant: TenantId,
    /// SHA-256 of the whole key. Keys are 190 bits of randomness, so a fast
    /// hash is enough; the plain key is never stored.
    pub hash: [u8; 32],
    pub subscriptions: Arc<[String]>,
    pub grants: Arc<Grants>,
}

impl ApiKey {
    pub fn may_use<Q: Ord + ?Sized>(&self, upstream: &Q) -> Option<&ToolFilter>
    where
        UpstreamName: std::borrow::Borrow<Q>,
    {
        self.grants.get(upstream)
    }
}

/// A resource the gateway refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: &'static str,
    pub name: String,
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} rejected: {}", self.kind, self.name, self.reason)
    }
}

impl From<&Rejected> for pb::Rejection {
    fn from(r: &Rejected) -> Self {
        pb::Rejection {
            resource: Some(pb::ResourceRef::new(
                Kind::from_label(r.kind).unwrap_or(Kind::Unspecified),
                r.name.clone(),
            )),
            reason: r.reason.clone(),
        }
    }
}

type GrantKey = (TenantId, Arc<[String]>);

/// API keys by prefix, in shards copied on write one at a time: a snapshot
/// shares its shards with the one before it, and a one-key delta copies one
/// shard (1/256 of the keys), not the whole index.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    shards: Arc<Vec<Arc<Shard>>>,
    len: usize,
}

type Shard = HashMap<KeyPrefix, Arc<ApiKey>>;

impl KeyIndex {
    pub const SHARDS: usize = 256;

    /// The shard a prefix lives in: what a stream that follows its key
    /// watches (`Gateway::watch_key`).
    pub fn shard_of(p: &KeyPrefix) -> usize {
        Self::shard(p)
    }

    /// The shards whose keys may differ from `before`'s: a shard a change
    /// did not touch is the same `Arc` in both (copy-on-write).
    pub fn changed_shards<'a>(&'a self, before: &'a KeyIndex) -> impl Iterator<Item = usize> + 'a {
        let all_same = Arc::ptr_eq(&self.shards, &before.shards);
        (0..Self::SHARDS).filter(move |&i| {
            !all_same
                && match (self.shards.get(i), before.shards.get(i)) {
                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                    (None, None) => false,
                    _ => true,
                }
        })
    }

    fn shard(p: &KeyPrefix) -> usize {
        // FNV-1a: prefixes are random already; this only spreads them.
        let h = p.0.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        (h as usize) % Self::SHARDS
    }

    pub fn get(&self, p: &KeyPrefix) -> Option<&Arc<ApiKey>> {
        self.shards.get(Self::shard(p))?.get(p)
    }

    pub fn contains_key(&self, p: &KeyPrefix) -> bool {
        self.get(p).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&KeyPrefix, &Arc<ApiKey>)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    fn shard_mut(&mut self, p: &KeyPrefix) -> &mut Shard {
        let shards = Arc::make_mut(&mut self.shards);
        if shards.is_empty() {
            shards.resize_with(Self::SHARDS, Default::default);
        }
        Arc::make_mut(&mut shards[Self::shard(p)])
    }

    pub fn insert(&mut self, key: Arc<ApiKey>) -> Option<Arc<ApiKey>> {
        let old = self.shard_mut(&key.prefix).insert(key.prefix, key);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, p: &KeyPrefix) -> Option<Arc<ApiKey>> {
        if !self.contains_key(p) {
            return None;
        }
        self.len -= 1;
        self.shard_mut(p).remove(p)
    }
}

impl std::ops::Index<&KeyPrefix> for KeyIndex {
    type Output = Arc<ApiKey>;

    fn index(&self, p: &KeyPrefix) -> &Arc<ApiKey> {
        self.get(p).expect("no such key")
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub tenants: BTreeSet<TenantId>,
    pub plans: BTreeMap<String, Arc<Plan>>,
    pub upstreams: BTreeMap<UpstreamName, Arc<Upstream>>,
    pub subscriptions: BTreeMap<String, Arc<Subscription>>,
    pub policies: BTreeMap<String, Arc<Policy>>,
    pub keys: KeyIndex,
    pub session_keys: Option<Arc<SessionSpec>>,
    /// Grants by (tenant, subscriptions), shared by keys alike; valid until
    /// a structural change.
    grants: Arc<HashMap<GrantKey, Arc<Grants>>>,
}

impl Snapshot {
    /// The file's resources, lowered; bad ones are left out and reported.
    pub fn build(cfg: &FileConfig) -> (Snapshot, Vec<Rejected>) {
        Self::build_with_env(cfg, &|name| std::env::var(name).ok())
    }

    /// `env` resolves `${VAR}` in upstream headers; tests pass their own.
    pub fn build_with_env(
        cfg: &FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Snapshot, Vec<Rejected>) {
        let (resources, mut rejected) = resources_from_file(cfg);
        let (snap, more) = Snapshot::default().apply(true, resources, Vec::new(), env);
        rejected.extend(more);
        (snap, rejected)
    }

    /// A new snapshot: this one with `removes` and `upserts` applied, or
    /// (`full`) made of `upserts` alone. Every resource that cannot be
    /// accepted is left out and reported; the caller decides whether the
    /// result is usable.
    pub fn apply(
        &self,
        full: bool,
        upserts: Vec<pb::Resource>,
        removes: Vec<pb::ResourceRef>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Snapshot, Vec<Rejected>) {
        let base = if full {
            Snapshot::default()
        } else {
            self.clone()
        };
        base.apply_owned(upserts, removes, env)
    }

    /// `apply` (a delta) on a snapshot nobody else holds: its maps change in
    /// place. This is how a large snapshot is built chunk by chunk.
    pub fn apply_owned(
        self,
        mut upserts: Vec<pb::Resource>,
        removes: Vec<pb::ResourceRef>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Snapshot, Vec<Rejected>) {
        let mut next = self;
        let mut rejected = Vec::new();
        let mut structural = false;
        let mut changed_keys: Vec<KeyPrefix> = Vec::new();

        for rf in &removes {
            let kind = rf.kind();
            structural |= !matches!(kind, Kind::ApiKey | Kind::SessionKeys | Kind::Tool);
            let name = rf.name.as_str();
            match kind {
                Kind::Tenant => {
                    if let Ok(t) = TenantId::parse(name) {
                        next.tenants.remove(&t);
                    }
                }
                Kind::Plan => {
                    next.plans.remove(name);
                }
                Kind::Upstream => {
                    if let Ok(u) = UpstreamName::parse(name) {
                        next.upstreams.remove(&u);
                    }
                }
                Kind::Subscription => {
                    next.subscriptions.remove(name);
                }
                Kind::Policy => {
                    next.policies.remove(name);
                }
                Kind::ApiKey => {
                    if let Ok(p) = KeyPrefix::parse(name) {
                        next.keys.remove(&p);
                    }
                }
                Kind::SessionKeys => next.session_keys = None,
                Kind::Tool | Kind::Unspecified => {}
            }
        }

        // Parents before children, so that one update can create both.
        upserts.sort_by_key(|r| r.kind().rank());
        let mut keys_in = Vec::new();
        for r in upserts {
            let (kind, name) = (r.kind(), r.name());
            let mut reject = |reason: String| {
                rejected.push(Rejected {
                    kind: kind.label(),
                    name: name.clone(),
                    reason,
                })
            };
            if let Err(e) = rules::validate(&r) {
                reject(e.to_string());
                continue;
            }
            structural |= !matches!(kind, Kind::ApiKey | Kind::SessionKeys | Kind::Tool);
            match r.resource {
                Some(R::Tenant(t)) => {
                    if let Ok(t) = TenantId::parse(&t.name) {
                        next.tenants.insert(t);
                    }
                }
                Some(R::Plan(p)) => match next.lower_plan(p) {
                    Ok(p) => {
                        next.plans.insert(p.name.clone(), Arc::new(p));
                    }
                    Err(e) => reject(e),
                },
                Some(R::Upstream(u)) => match next.lower_upstream(&u, env) {
                    Ok(u) => {
                        next.upstreams.insert(u.name.clone(), Arc::new(u));
                    }
                    Err(e) => reject(e),
                },
                Some(R::Subscription(s)) => match next.lower_subscription(s) {
                    Ok(s) => {
                        next.subscriptions.insert(s.name.clone(), Arc::new(s));
                    }
                    Err(e) => reject(e),
                },
                Some(R::Policy(p)) => match next.lower_policy(p) {
                    Ok(p) => {
                        next.policies.insert(p.name.clone(), Arc::new(p));
                    }
                    Err(e) => reject(e),
                },
                Some(R::ApiKey(k)) => keys_in.push(k),
                Some(R::SessionKeys(k)) => {
                    let key = |b: &[u8]| <[u8; 32]>::try_from(b).expect("validated: 32 bytes");
                    next.session_keys = Some(Arc::new(SessionSpec {
                        current: key(&k.current),
                        previous: k.previous.iter().map(|p| key(p)).collect(),
                        ttl_secs: k.ttl_seconds,
                    }));
                }
                Some(R::Tool(_)) | None => {}
            }
        }

        if structural {
            // Whatever pointed at a changed or removed parent is checked again.
            next.grants = Arc::default();
            next.revalidate(&mut rejected);
        }
        for k in keys_in {
            let prefix = k.prefix.clone();
            match next.lower_key(k) {
                Ok(key) => {
                    changed_keys.push(key.prefix);
                    next.keys.insert(Arc::new(key));
                }
                Err(e) => rejected.push(Rejected {
                    kind: Kind::ApiKey.label(),
                    name: prefix,
                    reason: e,
                }),
            }
        }
        if structural {
            next.regrant(&changed_keys, &mut rejected);
        }
        (next, rejected)
    }

    /// Drops subscriptions and policies whose parents are gone.
    fn revalidate(&mut self, rejected: &mut Vec<Rejected>) {
        let subs = std::mem::take(&mut self.subscriptions);
        for (name, s) in subs {
            let check = self.check_subscription(&s);
            match check {
                Ok(()) => {
                    self.subscriptions.insert(name, s);
                }
                Err(reason) => rejected.push(Rejected {
                    kind: Kind::Subscription.label(),
                    name,
                    reason,
                }),
            }
        }
        let policies = std::mem::take(&mut self.policies);
        for (name, p) in policies {
            let ok = self.tenants.contains(&p.tenant)
                && p.upstream
                    .as_ref()
                    .is_none_or(|u| self.upstreams.contains_key(u));
            if ok {
                self.policies.insert(name, p);
            } else {
                rejected.push(Rejected {
                    kind: Kind::Policy.label(),
                    name,
                    reason: "its tenant or upstream no longer exists".into(),
                });
            }
        }
    }

    /// Recomputes every key's grants but those just lowered.
    fn regrant(&mut self, fresh: &[KeyPrefix], rejected: &mut Vec<Rejected>) {
        let fresh: BTreeSet<_> = fresh.iter().map(|p| p.0).collect();
        let old = std::mem::take(&mut self.keys);
        let mut next = KeyIndex::default();
        let mut grants = std::mem::take(&mut self.grants);
        for (prefix, key) in old.iter() {
            let (prefix, key) = (*prefix, key.clone());
            if fresh.contains(&prefix.0) {
                next.insert(key);
                continue;
            }
            match grants_for(self, &mut grants, &key.tenant, &key.subscriptions) {
                Ok(g) if Arc::ptr_eq(&g, &key.grants) => {
                    next.insert(key);
                }
                Ok(g) => {
                    let k = ApiKey {
                        name: key.name.clone(),
                        prefix: key.prefix,
                        tenant: key.tenant.clone(),
                        hash: key.hash,
                        subscriptions: key.subscriptions.clone(),
                        grants: g,
                    };
                    next.insert(Arc::new(k));
                }
                Err(reason) => rejected.push(Rejected {
                    kind: Kind::ApiKey.label(),
                    name: prefix.as_str().to_owned(),
                    reason,
                }),
            }
        }
        self.keys = next;
        self.grants = grants;
    }

    fn tenant(&self, s: &str) -> Result<TenantId, String> {
        let t = TenantId::parse(s)?;
        self.tenants
            .get(&t)
            .cloned()
            .ok_or_else(|| format!("unknown tenant {s:?}"))
    }

    fn lower_plan(&self, p: pb::Plan) -> Result<Plan, String> {
        Ok(Plan {
            tenant: (!p.tenant.is_empty())
                .then(|| self.tenant(&p.tenant))
                .transpose()?,
            name: p.name,
            requests_per_minute: p.requests_per_minute,
            requests_per_day: p.requests_per_day,
        })
    }

    fn lower_upstream(
        &self,
        u: &pb::Upstream,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Upstream, String> {
        let name = UpstreamName::parse(&u.name)?;
        let url: Uri = u.url.parse().map_err(|e| format!("url {:?}: {e}", u.url))?;
        match url.scheme_str() {
            Some("http") | Some("https") if url.authority().is_some() => {}
            _ => {
                return Err(format!(
                    "url {:?} must be absolute http:// or https://",
                    u.url
                ));
            }
        }
        let tenant = (!u.tenant.is_empty())
            .then(|| self.tenant(&u.tenant))
            .transpose()?;
        let mut headers = Vec::new();
        for (k, v) in &u.headers {
            let hn = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("bad header name {k:?}"))?;
            let value = expand_env(v, env)
                .map_err(|var| format!("header {k:?}: environment variable {var} is not set"))?;
            let mut hv = HeaderValue::from_str(&value)
                .map_err(|_| format!("header {k:?} has an invalid value"))?;
            hv.set_sensitive(true);
            headers.push((hn, hv));
        }
        Ok(Upstream {
            name,
            url,
            tenant,
            headers,
        })
    }

    fn check_subscription(&self, s: &Subscription) -> Result<(), String> {
        if !self.tenants.contains(&s.tenant) {
            return Err(format!("unknown tenant {:?}", s.tenant.as_str()));
        }
        let up = self
            .upstreams
            .get(&s.upstream)
            .ok_or_else(|| format!("unknown upstream {:?}", s.upstream.as_str()))?;
        if up.tenant.as_ref().is_some_and(|t| *t != s.tenant) {
            return Err(format!(
                "upstream {:?} belongs to another tenant",
                s.upstream.as_str()
            ));
        }
        if let Some(p) = &s.plan {
            let plan = self
                .plans
                .get(p)
                .ok_or_else(|| format!("unknown plan {p:?}"))?;
            if plan.tenant.as_ref().is_some_and(|t| *t != s.tenant) {
                return Err(format!("plan {p:?} belongs to another tenant"));
            }
        }
        Ok(())
    }

    fn lower_subscription(&self, s: pb::Subscription) -> Result<Subscription, String> {
        let sub = Subscription {
            tenant: self.tenant(&s.tenant)?,
            upstream: UpstreamName::parse(&s.upstream)?,
            filter: ToolFilter::from_list(&s.tools),
            plan: (!s.plan.is_empty()).then_some(s.plan),
            name: s.name,
        };
        self.check_subscription(&sub)?;
        Ok(sub)
    }

    fn lower_policy(&self, p: pb::Policy) -> Result<Policy, String> {
        let upstream = (!p.upstream.is_empty())
            .then(|| UpstreamName::parse(&p.upstream))
            .transpose()?;
        if let Some(u) = &upstream
            && !self.upstreams.contains_key(u)
        {
            return Err(format!("unknown upstream {:?}", u.as_str()));
        }
        Ok(Policy {
            tenant: self.tenant(&p.tenant)?,
            upstream,
            deny_tools: p.deny_tools,
            name: p.name,
        })
    }

    fn lower_key(&mut self, k: pb::ApiKey) -> Result<ApiKey, String> {
        let prefix = KeyPrefix::parse(&k.prefix)?;
        let tenant = self.tenant(&k.tenant)?;
        let hash = <[u8; 32]>::try_from(k.sha256.as_slice())
            .map_err(|_| "sha256 must be 32 bytes".to_owned())?;
        let mut subs = k.subscriptions;
        subs.sort();
        subs.dedup();
        let mut subs: Arc<[String]> = subs.into();
        // Keys alike share one list (and one `Grants`): 100k keys, one copy.
        if let Some(((_, shared), _)) = self.grants.get_key_value(&(tenant.clone(), subs.clone())) {
            subs = shared.clone();
        }
        let mut cache = std::mem::take(&mut self.grants);
        let grants = grants_for(self, &mut cache, &tenant, &subs);
        self.grants = cache;
        let grants = grants?;
        Ok(ApiKey {
            name: k.display_name.into_boxed_str(),
            prefix,
            tenant,
            hash,
            // Share the interned list.
            subscriptions: subs,
            grants,
        })
    }
}

/// The grants of a key of `tenant` with `subs`, computed once per distinct pair.
fn grants_for(
    snap: &Snapshot,
    cache: &mut Arc<HashMap<GrantKey, Arc<Grants>>>,
    tenant: &TenantId,
    subs: &Arc<[String]>,
) -> Result<Arc<Grants>, String> {
    let k = (tenant.clone(), subs.clone());
    if let Some(g) = cache.get(&k) {
        return Ok(g.clone());
    }
    let mut grants = Grants::new();
    for name in subs.iter() {
        let s = snap
            .subscriptions
            .get(name)
            .ok_or_else(|| format!("unknown subscription {name:?}"))?;
        if s.tenant != *tenant {
            return Err(format!("subscription {name:?} belongs to another tenant"));
        }
        grants
            .entry(s.upstream.clone())
            .and_modify(|f| f.union(&s.filter))
            .or_insert_with(|| s.filter.clone());
    }
    for p in snap.policies.values().filter(|p| p.tenant == *tenant) {
        for (up, f) in grants.iter_mut() {
            if p.upstream.as_ref().is_none_or(|u| u == up) {
                f.deny.extend(p.deny_tools.iter().cloned());
            }
        }
    }
    let g = Arc::new(grants);
    Arc::make_mut(cache).insert(k, g.clone());
    Ok(g)
}

/// The file's resource sections as `stoa.v1` resources: the one shape the
/// model is built from. File-only mistakes (a duplicate name, a hash that is
/// not `sha256:<hex>`) are reported here.
pub fn resources_from_file(cfg: &FileConfig) -> (Vec<pb::Resource>, Vec<Rejected>) {
    let mut out: Vec<pb::Resource> = Vec::new();
    let mut rejected = Vec::new();
    let mut seen: BTreeSet<(Kind, String)> = BTreeSet::new();
    let mut push = |r: pb::Resource, shown: &str, rejected: &mut Vec<Rejected>| {
        if seen.insert((r.kind(), r.name())) {
            out.push(r);
        } else {
            let reason = match r.kind() {
                Kind::ApiKey => format!("duplicate prefix {:?}", r.name()),
                _ => "duplicate name".into(),
            };
            rejected.push(Rejected {
                kind: r.kind().label(),
                name: shown.to_owned(),
                reason,
            });
        }
    };
    for t in &cfg.tenants {
        let r = R::Tenant(pb::Tenant {
            name: t.name.clone(),
            display_name: String::new(),
        });
        push(r.into(), &t.name, &mut rejected);
    }
    for u in &cfg.upstreams {
        let r = R::Upstream(pb::Upstream {
            name: u.name.clone(),
            tenant: u.tenant.clone().unwrap_or_default(),
            url: u.url.clone(),
            headers: u.headers.clone().into_iter().collect(),
            description: String::new(),
        });
        push(r.into(), &u.name, &mut rejected);
    }
    for s in &cfg.subscriptions {
        let r = R::Subscription(pb::Subscription {
            name: s.name.clone(),
            tenant: s.tenant.clone(),
            upstream: s.upstream.clone(),
            tools: s.tools.clone(),
            plan: String::new(),
        });
        push(r.into(), &s.name, &mut rejected);
    }
    for k in &cfg.api_keys {
        let sha256 = match parse_hash(&k.hash) {
            Ok(h) => h.to_vec(),
            Err(reason) => {
                rejected.push(Rejected {
                    kind: Kind::ApiKey.label(),
                    name: k.name.clone(),
                    reason,
                });
                continue;
            }
        };
        if let Err(reason) = KeyPrefix::parse(&k.prefix) {
            rejected.push(Rejected {
                kind: Kind::ApiKey.label(),
                name: k.name.clone(),
                reason,
            });
            continue;
        }
        let r = R::ApiKey(pb::ApiKey {
            prefix: k.prefix.clone(),
            display_name: k.name.clone(),
            tenant: k.tenant.clone(),
            sha256,
            subscriptions: k.subscriptions.clone(),
        });
        push(r.into(), &k.name, &mut rejected);
    }
    (out, rejected)
}

/// Replaces `${VAR}`; returns the name of the first unset variable.
pub(crate) fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&env(var).ok_or_else(|| var.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "hash must look like sha256:<64 hex digits>".to_owned())?;
    if hex.len() != 64 {
        return Err("hash must look like sha256:<64 hex digits>".into());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "hash is not hex")?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| "hash is not hex".to_owned())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> (Snapshot, Vec<Rejected>) {
        let res = FileConfig::parse(yaml).unwrap();
        Snapshot::build_with_env(&res, &|v| (v == "TOKEN").then(|| "t0k".to_owned()))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const BASE: &str = r#"
tenants: [{name: acme}, {name: globex}]
upstreams:
  - {name: ref, url: "http://127.0.0.1:9/mcp", headers: {Authorization: "Bearer ${TOKEN}"}}
  - {name: private, url: "http://127.0.0.1:9/mcp", tenant: globex}
subscriptions:
  - {name: s1, tenant: acme, upstream: ref, tools: [echo]}
  - {name: s2, tenant: acme, upstream: ref, tools: [add]}
  - {name: s3, tenant: acme, upstream: private}
api_keys:
  - {name: k1, tenant: acme, prefix: AAAAbbbb, hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000", subscriptions: [s1, s2]}
"#;

    fn prefix(s: &str) -> KeyPrefix {
        KeyPrefix::parse(s).unwrap()
    }
    fn up(s: &str) -> UpstreamName {
        UpstreamName::parse(s).unwrap()
    }

    #[test]
    fn grants_are_the_union_of_subscriptions() {
        let (snap, rejected) = build(BASE);
        let key = &snap.keys[&prefix("AAAAbbbb")];
        let f = key.may_use(&up("ref")).unwrap();
        assert!(f.allows("echo") && f.allows("add") && !f.allows("rm"));
        assert!(key.may_use(&up("private")).is_none());
        // s3 refers to another tenant's upstream: refused, the rest stands.
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].name, "s3");
        let u = &snap.upstreams[&up("ref")];
        assert_eq!(u.headers[0].1, "Bearer t0k");
        assert!(u.headers[0].1.is_sensitive());
    }

    #[test]
    fn bad_resources_are_rejected_with_reasons() {
        let (snap, rejected) = build(
            r#"
tenants: [{name: acme}]
upstreams:
  - {name: "Bad_Name", url: "http://x/mcp"}
  - {name: nourl, url: "/relative"}
  - {name: noenv, url: "http://x/mcp", headers: {X-Key: "${MISSING}"}}
api_keys:
  - {name: k, tenant: acme, prefix: short, hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000", subscriptions: []}
"#,
        );
        assert!(snap.upstreams.is_empty());
        let reasons: Vec<String> = rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:#?}");
        assert!(
            reasons.iter().any(|r| r.contains("[a-z0-9-]")),
            "{reasons:#?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("absolute")),
            "{reasons:#?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("MISSING")),
            "{reasons:#?}"
        );
        assert!(reasons.iter().any(|r| r.contains("prefix")), "{reasons:#?}");
    }

    fn key(p: &str, subs: &[&str]) -> pb::Resource {
        R::ApiKey(pb::ApiKey {
            prefix: p.into(),
            display_name: p.into(),
            tenant: "acme".into(),
            sha256: vec![1; 32],
            subscriptions: subs.iter().map(|s| s.to_string()).collect(),
        })
        .into()
    }

    #[test]
    fn deltas_change_only_what_they_name() {
        let (base, _) = build(BASE);
        // A new key shares the grants of keys with the same subscriptions.
        let (next, rejected) =
            base.apply(false, vec![key("CCCCdddd", &["s2", "s1"])], vec![], &no_env);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(Arc::ptr_eq(
            &next.keys[&prefix("CCCCdddd")].grants,
            &next.keys[&prefix("AAAAbbbb")].grants
        ));
        assert!(Arc::ptr_eq(
            &next.upstreams[&up("ref")],
            &base.upstreams[&up("ref")]
        ));
        let shared = base
            .keys
            .shards
            .iter()
            .zip(next.keys.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(
            shared,
            KeyIndex::SHARDS - 1,
            "one shard copied, the rest shared"
        );
        assert!(
            !base.keys.contains_key(&prefix("CCCCdddd")),
            "the old snapshot is untouched"
        );

        // Revocation.
        let (next, rejected) = next.apply(
            false,
            vec![],
            vec![pb::ResourceRef::new(Kind::ApiKey, "AAAAbbbb")],
            &no_env,
        );
        assert!(rejected.is_empty());
        assert_eq!(next.keys.len(), 1);

        // A subscription change reaches every key that uses it.
        let widened: pb::Resource = R::Subscription(pb::Subscription {
            name: "s1".into(),
            tenant: "acme".into(),
            upstream: "ref".into(),
            tools: vec!["*".into()],
            plan: String::new(),
        })
        .into();
        let (next, rejected) = next.apply(false, vec![widened], vec![], &no_env);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(
            next.keys[&prefix("CCCCdddd")]
                .may_use(&up("ref"))
                .unwrap()
                .allows("rm")
        );

        // Removing a subscription a key still uses is refused, with reasons.
        let (_, rejected) = next.apply(
            false,
            vec![],
            vec![pb::ResourceRef::new(Kind::Subscription, "s1")],
            &no_env,
        );
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].reason.contains("unknown subscription \"s1\""),
            "{rejected:?}"
        );
    }

    #[test]
    fn policies_narrow_grants() {
        let (base, _) = build(BASE);
        let deny: pb::Resource = R::Policy(pb::Policy {
            name: "no-add".into(),
            tenant: "acme".into(),
            upstream: String::new(),
            deny_tools: vec!["ad*".into()],
        })
        .into();
        let (next, rejected) = base.apply(false, vec![deny], vec![], &no_env);
        assert!(rejected.is_empty(), "{rejected:?}");
        let f = next.keys[&prefix("AAAAbbbb")].may_use(&up("ref")).unwrap();
        assert!(f.allows("echo") && !f.allows("add"));
        assert!(!f.is_all());
    }

    #[test]
    fn one_update_may_create_parents_and_children_in_any_order() {
        let sub: pb::Resource = R::Subscription(pb::Subscription {
            name: "s".into(),
            tenant: "acme".into(),
            upstream: "u".into(),
            tools: vec!["*".into()],
            plan: String::new(),
        })
        .into();
        let upstream: pb::Resource = R::Upstream(pb::Upstream {
            name: "u".into(),
            url: "http://x/mcp".into(),
            ..Default::default()
        })
        .into();
        let tenant: pb::Resource = R::Tenant(pb::Tenant {
            name: "acme".into(),
            display_name: String::new(),
        })
        .into();
        let (snap, rejected) = Snapshot::default().apply(
            true,
            vec![key("AAAAbbbb", &["s"]), sub, upstream, tenant],
            vec![],
            &no_env,
        );
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(
            snap.keys[&prefix("AAAAbbbb")]
                .may_use(&up("u"))
                .unwrap()
                .is_all()
        );
    }

    #[test]
    fn upstream_names() {
        for ok in ["a", "ref-1", "x".repeat(32).as_str()] {
            assert!(UpstreamName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", "x".repeat(33).as_str()] {
            assert!(UpstreamName::parse(bad).is_err(), "{bad}");
        }
    }
}
