//! What every resource has in common: its kind, its name, its owning tenant,
//! what it points at, and how it looks with its secrets blanked.

use crate::pb::{self, Kind, resource::Resource as R};

impl Kind {
    /// The short, stable name used in the store, logs and `stoactl`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Tenant => "tenant",
            Kind::Upstream => "upstream",
            Kind::Tool => "tool",
            Kind::Plan => "plan",
            Kind::Subscription => "subscription",
            Kind::ApiKey => "api_key",
            Kind::Policy => "policy",
            Kind::SessionKeys => "session_keys",
        }
    }

    pub fn from_label(s: &str) -> Option<Kind> {
        Some(match s {
            "tenant" | "tenants" => Kind::Tenant,
            "upstream" | "upstreams" => Kind::Upstream,
            "tool" | "tools" => Kind::Tool,
            "plan" | "plans" => Kind::Plan,
            "subscription" | "subscriptions" => Kind::Subscription,
            "api_key" | "api_keys" | "key" | "keys" | "api-key" | "api-keys" => Kind::ApiKey,
            "policy" | "policies" => Kind::Policy,
            "session_keys" | "session-keys" => Kind::SessionKeys,
            _ => return None,
        })
    }

    /// Parents before children: the order in which a snapshot is sent and
    /// applied, so that every resource finds what it points at.
    pub fn rank(self) -> u8 {
        match self {
            Kind::Tenant => 0,
            Kind::Plan => 1,
            Kind::Upstream => 2,
            Kind::Tool => 3,
            Kind::Subscription => 4,
            Kind::Policy => 5,
            Kind::ApiKey => 6,
            Kind::SessionKeys => 7,
            Kind::Unspecified => 8,
        }
    }

    /// Kinds that travel on the config stream to gateways.
    pub fn on_stream(self) -> bool {
        !matches!(self, Kind::Unspecified | Kind::Tool)
    }
}

impl pb::ResourceRef {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        pb::ResourceRef {
            kind: kind as i32,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for pb::ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.kind().label(), self.name)
    }
}

impl From<R> for pb::Resource {
    fn from(r: R) -> Self {
        pb::Resource { resource: Some(r) }
    }
}

impl pb::Resource {
    pub fn kind(&self) -> Kind {
        match &self.resource {
            None => Kind::Unspecified,
            Some(R::Tenant(_)) => Kind::Tenant,
            Some(R::Upstream(_)) => Kind::Upstream,
            Some(R::Tool(_)) => Kind::Tool,
            Some(R::Plan(_)) => Kind::Plan,
            Some(R::Subscription(_)) => Kind::Subscription,
            Some(R::ApiKey(_)) => Kind::ApiKey,
            Some(R::Policy(_)) => Kind::Policy,
            Some(R::SessionKeys(_)) => Kind::SessionKeys,
        }
    }

    /// Unique within its kind. Tools are `<upstream>/<tool>`.
    pub fn name(&self) -> String {
        match &self.resource {
            None => String::new(),
            Some(R::Tenant(x)) => x.name.clone(),
            Some(R::Upstream(x)) => x.name.clone(),
            Some(R::Tool(x)) => format!("{}/{}", x.upstream, x.name),
            Some(R::Plan(x)) => x.name.clone(),
            Some(R::Subscription(x)) => x.name.clone(),
            Some(R::ApiKey(x)) => x.prefix.clone(),
            Some(R::Policy(x)) => x.name.clone(),
            Some(R::SessionKeys(x)) => x.name.clone(),
        }
    }

    pub fn reference(&self) -> pb::ResourceRef {
        pb::ResourceRef::new(self.kind(), self.name())
    }

    /// The owning tenant; empty for shared resources.
    pub fn tenant(&self) -> &str {
        match &self.resource {
            Some(R::Tenant(x)) => &x.name,
            Some(R::Upstream(x)) => &x.tenant,
            Some(R::Plan(x)) => &x.tenant,
            Some(R::Subscription(x)) => &x.tenant,
            Some(R::ApiKey(x)) => &x.tenant,
            Some(R::Policy(x)) => &x.tenant,
            None | Some(R::Tool(_)) | Some(R::SessionKeys(_)) => "",
        }
    }

    /// The resources this one points at; each must exist while it does.
    pub fn references(&self) -> Vec<pb::ResourceRef> {
        use pb::ResourceRef as Ref;
        let mut out = Vec::new();
        let tenant = |t: &str, out: &mut Vec<Ref>| {
            if !t.is_empty() {
                out.push(Ref::new(Kind::Tenant, t));
            }
        };
        match &self.resource {
            None | Some(R::Tenant(_)) | Some(R::SessionKeys(_)) => {}
            Some(R::Upstream(x)) => tenant(&x.tenant, &mut out),
            Some(R::Tool(x)) => out.push(Ref::new(Kind::Upstream, &x.upstream)),
            Some(R::Plan(x)) => tenant(&x.tenant, &mut out),
            Some(R::Subscription(x)) => {
                tenant(&x.tenant, &mut out);
                out.push(Ref::new(Kind::Upstream, &x.upstream));
                if !x.plan.is_empty() {
                    out.push(Ref::new(Kind::Plan, &x.plan));
                }
            }
            Some(R::ApiKey(x)) => {
                tenant(&x.tenant, &mut out);
                for s in &x.subscriptions {
                    out.push(Ref::new(Kind::Subscription, s));
                }
            }
            Some(R::Policy(x)) => {
                tenant(&x.tenant, &mut out);
                if !x.upstream.is_empty() {
                    out.push(Ref::new(Kind::Upstream, &x.upstream));
                }
            }
        }
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        out.dedup();
        out
    }

    /// A copy fit for the admin API, the audit log and logs: header values
    /// and key material blanked.
    pub fn redacted(&self) -> pb::Resource {
        let mut r = self.clone();
        match &mut r.resource {
            Some(R::Upstream(u)) => {
                for v in u.headers.values_mut() {
                    v.clear();
                }
            }
            Some(R::SessionKeys(k)) => {
                k.current.clear();
                k.previous.clear();
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_point_up() {
        let key: pb::Resource = R::ApiKey(pb::ApiKey {
            prefix: "AAAAbbbb".into(),
            tenant: "acme".into(),
            subscriptions: vec!["s2".into(), "s1".into(), "s1".into()],
            ..Default::default()
        })
        .into();
        let refs: Vec<String> = key.references().iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refs,
            [
                "tenant \"acme\"",
                "subscription \"s1\"",
                "subscription \"s2\""
            ]
        );
        assert_eq!(key.name(), "AAAAbbbb");
        assert_eq!(key.kind(), Kind::ApiKey);
    }

    #[test]
    fn redaction_blanks_secrets_and_keeps_names() {
        let up: pb::Resource = R::Upstream(pb::Upstream {
            name: "gh".into(),
            url: "https://x/mcp".into(),
            headers: [("Authorization".to_owned(), "Bearer s3cret".to_owned())].into(),
            ..Default::default()
        })
        .into();
        let shown = serde_json::to_string(&up.redacted()).unwrap();
        assert!(
            !shown.contains("s3cret") && shown.contains("Authorization"),
            "{shown}"
        );
    }

    #[test]
    fn json_is_the_proto3_mapping() {
        let r: pb::Resource = R::ApiKey(pb::ApiKey {
            prefix: "AAAAbbbb".into(),
            sha256: vec![0xff; 2],
            ..Default::default()
        })
        .into();
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["apiKey"]["prefix"], "AAAAbbbb");
        assert_eq!(j["apiKey"]["sha256"], "//8=", "bytes are base64");
        let back: pb::Resource = serde_json::from_value(j).unwrap();
        assert_eq!(back, r);
        let rf: pb::ResourceRef =
            serde_json::from_str(r#"{"kind":"KIND_TENANT","name":"acme"}"#).unwrap();
        assert_eq!(rf.kind(), Kind::Tenant);
    }
}
