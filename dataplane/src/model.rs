//! The in-memory model the request path reads: an immutable `Snapshot` of
//! tenants, upstreams, subscriptions and API keys, indexed for lookups.
//!
//! Built from the config file today and from the control plane's config
//! stream later: both lower into `Resources` and call `Snapshot::build`.
//! A resource that cannot be accepted is rejected with its reason; the rest
//! of the snapshot is still built (bad config is data, not a crash).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::Arc,
};

use http::{HeaderName, HeaderValue, Uri};

use crate::config::FileConfig;

/// `[a-z0-9][a-z0-9-]{0,31}`: safe in paths, metric labels and tool-name prefixes,
/// and never contains the `__` that separates aggregated names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamName(Arc<str>);

impl UpstreamName {
    pub const MAX_LEN: usize = 32;

    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.contains("--");
        if ok {
            Ok(UpstreamName(s.into()))
        } else {
            Err(format!(
                "upstream name {s:?} must be 1..=32 of [a-z0-9-], not starting or ending with '-' and without '--'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
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
        if !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Ok(TenantId(s.into()))
        } else {
            Err(format!("tenant name {s:?} must be 1..=63 of [A-Za-z0-9_-]"))
        }
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
        let b = s.as_bytes();
        if b.len() == 8 && b.iter().all(|c| c.is_ascii_alphanumeric()) {
            let mut p = [0; 8];
            p.copy_from_slice(b);
            Ok(KeyPrefix(p))
        } else {
            Err(format!("key prefix {s:?} must be 8 of [A-Za-z0-9]"))
        }
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("checked ASCII at construction")
    }
}

/// Which tools of one upstream a key may see and call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolFilter {
    All,
    Only(BTreeSet<String>),
}

impl ToolFilter {
    pub fn allows(&self, tool: &str) -> bool {
        match self {
            ToolFilter::All => true,
            ToolFilter::Only(set) => set.contains(tool),
        }
    }

    fn union(&mut self, other: &ToolFilter) {
        match (&mut *self, other) {
            (ToolFilter::All, _) => {}
            (_, ToolFilter::All) => *self = ToolFilter::All,
            (ToolFilter::Only(a), ToolFilter::Only(b)) => a.extend(b.iter().cloned()),
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

#[derive(Debug)]
pub struct ApiKey {
    pub name: String,
    pub prefix: KeyPrefix,
    pub tenant: TenantId,
    /// SHA-256 of the whole key. Keys are 190 bits of randomness, so a fast
    /// hash is enough; the plain key is never stored.
    pub hash: [u8; 32],
    /// Upstream → tools, the union of the key's subscriptions.
    pub grants: BTreeMap<UpstreamName, ToolFilter>,
}

impl ApiKey {
    pub fn may_use(&self, upstream: &UpstreamName) -> Option<&ToolFilter> {
        self.grants.get(upstream)
    }
}

/// Everything the resource part of a config says, before validation.
pub type Resources = FileConfig;

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

#[derive(Debug, Default)]
pub struct Snapshot {
    pub tenants: BTreeSet<TenantId>,
    pub upstreams: BTreeMap<UpstreamName, Arc<Upstream>>,
    pub keys: HashMap<KeyPrefix, Arc<ApiKey>>,
}

impl Snapshot {
    pub fn build(res: &Resources) -> (Snapshot, Vec<Rejected>) {
        Self::build_with_env(res, &|name| std::env::var(name).ok())
    }

    /// `env` resolves `${VAR}` in upstream headers; tests pass their own.
    pub fn build_with_env(
        res: &Resources,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Snapshot, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let mut reject = |kind, name: &str, reason: String| {
            rejected.push(Rejected {
                kind,
                name: name.to_owned(),
                reason,
            })
        };
        let mut snap = Snapshot::default();

        for t in &res.tenants {
            match TenantId::parse(&t.name) {
                Ok(id) if !snap.tenants.insert(id.clone()) => {
                    reject("tenant", &t.name, "duplicate name".into())
                }
                Ok(_) => {}
                Err(e) => reject("tenant", &t.name, e),
            }
        }

        for u in &res.upstreams {
            match lower_upstream(u, &snap.tenants, env) {
                Ok(up) if snap.upstreams.contains_key(&up.name) => {
                    reject("upstream", &u.name, "duplicate name".into())
                }
                Ok(up) => {
                    snap.upstreams.insert(up.name.clone(), Arc::new(up));
                }
                Err(e) => reject("upstream", &u.name, e),
            }
        }

        let mut subs: HashMap<&str, (TenantId, UpstreamName, ToolFilter)> = HashMap::new();
        for s in &res.subscriptions {
            let lowered = (|| {
                let tenant = TenantId::parse(&s.tenant)?;
                if !snap.tenants.contains(&tenant) {
                    return Err(format!("unknown tenant {:?}", s.tenant));
                }
                let name = UpstreamName::parse(&s.upstream)?;
                let up = snap
                    .upstreams
                    .get(&name)
                    .ok_or_else(|| format!("unknown upstream {:?}", s.upstream))?;
                if up.tenant.as_ref().is_some_and(|t| *t != tenant) {
                    return Err(format!(
                        "upstream {:?} belongs to another tenant",
                        s.upstream
                    ));
                }
                let filter = if s.tools.iter().any(|t| t == "*") {
                    ToolFilter::All
                } else {
                    ToolFilter::Only(s.tools.iter().cloned().collect())
                };
                if subs.contains_key(s.name.as_str()) {
                    return Err("duplicate name".into());
                }
                Ok((tenant, name, filter))
            })();
            match lowered {
                Ok(v) => {
                    subs.insert(&s.name, v);
                }
                Err(e) => reject("subscription", &s.name, e),
            }
        }

        for k in &res.api_keys {
            let lowered = (|| {
                let prefix = KeyPrefix::parse(&k.prefix)?;
                let tenant = TenantId::parse(&k.tenant)?;
                if !snap.tenants.contains(&tenant) {
                    return Err(format!("unknown tenant {:?}", k.tenant));
                }
                let hash = parse_hash(&k.hash)?;
                let mut grants: BTreeMap<UpstreamName, ToolFilter> = BTreeMap::new();
                for sname in &k.subscriptions {
                    let (st, up, filter) = subs
                        .get(sname.as_str())
                        .ok_or_else(|| format!("unknown subscription {sname:?}"))?;
                    if *st != tenant {
                        return Err(format!("subscription {sname:?} belongs to another tenant"));
                    }
                    grants
                        .entry(up.clone())
                        .and_modify(|f| f.union(filter))
                        .or_insert_with(|| filter.clone());
                }
                if snap.keys.contains_key(&prefix) {
                    return Err(format!("duplicate prefix {:?}", k.prefix));
                }
                Ok(ApiKey {
                    name: k.name.clone(),
                    prefix,
                    tenant,
                    hash,
                    grants,
                })
            })();
            match lowered {
                Ok(key) => {
                    snap.keys.insert(key.prefix, Arc::new(key));
                }
                Err(e) => reject("api_key", &k.name, e),
            }
        }
        (snap, rejected)
    }
}

fn lower_upstream(
    u: &crate::config::UpstreamConfig,
    tenants: &BTreeSet<TenantId>,
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
    let tenant = match &u.tenant {
        None => None,
        Some(t) => {
            let id = TenantId::parse(t)?;
            if !tenants.contains(&id) {
                return Err(format!("unknown tenant {t:?}"));
            }
            Some(id)
        }
    };
    let mut headers = Vec::new();
    for (k, v) in &u.headers {
        let hn =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name {k:?}"))?;
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

/// Replaces `${VAR}`; returns the name of the first unset variable.
fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
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

    #[test]
    fn grants_are_the_union_of_subscriptions() {
        let (snap, rejected) = build(BASE);
        let key = &snap.keys[&KeyPrefix::parse("AAAAbbbb").unwrap()];
        let f = key.may_use(&UpstreamName::parse("ref").unwrap()).unwrap();
        assert!(f.allows("echo") && f.allows("add") && !f.allows("rm"));
        assert!(
            key.may_use(&UpstreamName::parse("private").unwrap())
                .is_none()
        );
        // s3 refers to another tenant's upstream: refused, the rest stands.
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].name, "s3");
        let up = &snap.upstreams[&UpstreamName::parse("ref").unwrap()];
        assert_eq!(up.headers[0].1, "Bearer t0k");
        assert!(up.headers[0].1.is_sensitive());
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
  - {name: k, tenant: acme, prefix: short, hash: "sha256:00", subscriptions: []}
"#,
        );
        assert!(snap.upstreams.is_empty());
        let reasons: Vec<String> = rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:#?}");
        assert!(reasons[0].contains("[a-z0-9-]"));
        assert!(reasons[1].contains("absolute"));
        assert!(reasons[2].contains("MISSING"));
        assert!(reasons[3].contains("prefix"));
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
