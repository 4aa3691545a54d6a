//! What a valid resource is. The control plane refuses an invalid write with
//! the field named (`InvalidArgument`); the gateway's model types parse
//! through the same functions, so the two can never disagree about a name.

use crate::pb::{self, resource::Resource as R};

/// A field that breaks a rule: `field` is a path in the resource
/// (`upstream.url`), `reason` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn field(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Names of tenants, plans, subscriptions and policies: 1..=63 of `[A-Za-z0-9_-]`.
pub fn name(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(format!("{s:?} must be 1..=63 of [A-Za-z0-9_-]"))
    }
}

pub const UPSTREAM_NAME_MAX: usize = 32;

/// `[a-z0-9-]`, 1..=32, no leading, trailing or doubled `-`: safe in paths,
/// metric labels and tool-name prefixes, and never contains the `__` that
/// separates aggregated names.
pub fn upstream_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= UPSTREAM_NAME_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "upstream name {s:?} must be 1..=32 of [a-z0-9-], not starting or ending with '-' and without '--'"
        ))
    }
}

/// The public part of an API key: 8 of `[A-Za-z0-9]`.
pub fn key_prefix(s: &str) -> Result<(), String> {
    if s.len() == 8 && s.bytes().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(format!("key prefix {s:?} must be 8 of [A-Za-z0-9]"))
    }
}

/// An absolute `http://` or `https://` URL with a host.
pub fn upstream_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !s.chars().any(char::is_whitespace) => {
            let authority = r.split(['/', '?', '#']).next().unwrap_or("");
            if authority.contains('@') {
                Err(format!(
                    "url {s:?} carries credentials: give them as upstream headers instead"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!("url {s:?} must be absolute http:// or https://")),
    }
}

/// An HTTP header name (RFC 9110 token) and a value without control characters.
pub fn header(name: &str, value: &str) -> Result<(), String> {
    const TOKEN_EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOKEN_EXTRA.contains(&b))
    {
        return Err(format!("bad header name {name:?}"));
    }
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(format!(
            "header {name:?} has control characters in its value"
        ));
    }
    Ok(())
}

fn opt(s: &str, check: fn(&str) -> Result<(), String>) -> Result<(), String> {
    if s.is_empty() { Ok(()) } else { check(s) }
}

/// Checks one resource against every rule that needs no other resource.
/// (References between resources are the store's business.)
pub fn validate(r: &pb::Resource) -> Result<(), FieldError> {
    match r.resource.as_ref() {
        None => Err(field("resource", "no resource given")),
        Some(R::Tenant(t)) => name(&t.name).map_err(|e| field("tenant.name", e)),
        Some(R::Upstream(u)) => {
            upstream_name(&u.name).map_err(|e| field("upstream.name", e))?;
            opt(&u.tenant, name).map_err(|e| field("upstream.tenant", e))?;
            upstream_url(&u.url).map_err(|e| field("upstream.url", e))?;
            for (k, v) in &u.headers {
                header(k, v).map_err(|e| field("upstream.headers", e))?;
            }
            Ok(())
        }
        Some(R::Tool(t)) => {
            upstream_name(&t.upstream).map_err(|e| field("tool.upstream", e))?;
            if t.name.is_empty() || t.name.len() > 128 {
                return Err(field("tool.name", "must be 1..=128 characters"));
            }
            Ok(())
        }
        Some(R::Plan(p)) => {
            name(&p.name).map_err(|e| field("plan.name", e))?;
            opt(&p.tenant, name).map_err(|e| field("plan.tenant", e))
        }
        Some(R::Subscription(s)) => {
            name(&s.name).map_err(|e| field("subscription.name", e))?;
            name(&s.tenant).map_err(|e| field("subscription.tenant", e))?;
            upstream_name(&s.upstream).map_err(|e| field("subscription.upstream", e))?;
            opt(&s.plan, name).map_err(|e| field("subscription.plan", e))?;
            if s.tools.is_empty() {
                return Err(field(
                    "subscription.tools",
                    "list the tools granted, or \"*\" for all",
                ));
            }
            if s.tools.iter().any(|t| t.is_empty() || t.len() > 128) {
                return Err(field(
                    "subscription.tools",
                    "tool names are 1..=128 characters",
                ));
            }
            Ok(())
        }
        Some(R::ApiKey(k)) => {
            key_prefix(&k.prefix).map_err(|e| field("api_key.prefix", e))?;
            name(&k.tenant).map_err(|e| field("api_key.tenant", e))?;
            if k.sha256.len() != 32 {
                return Err(field("api_key.sha256", "must be 32 bytes"));
            }
            for s in &k.subscriptions {
                name(s).map_err(|e| field("api_key.subscriptions", e))?;
            }
            if k.display_name.len() > 200 {
                return Err(field("api_key.display_name", "at most 200 characters"));
            }
            Ok(())
        }
        Some(R::Policy(p)) => {
            name(&p.name).map_err(|e| field("policy.name", e))?;
            name(&p.tenant).map_err(|e| field("policy.tenant", e))?;
            opt(&p.upstream, upstream_name).map_err(|e| field("policy.upstream", e))?;
            if p.deny_tools.is_empty() || p.deny_tools.iter().any(|t| t.is_empty()) {
                return Err(field(
                    "policy.deny_tools",
                    "list tool names (or `prefix*` patterns) to deny",
                ));
            }
            Ok(())
        }
        Some(R::SessionKeys(k)) => {
            if k.name != "default" {
                return Err(field(
                    "session_keys.name",
                    "there is one set, named \"default\"",
                ));
            }
            if k.current.len() != 32 || k.previous.iter().any(|p| p.len() != 32) {
                return Err(field("session_keys", "keys are 32 bytes"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "ref-1", "x".repeat(32).as_str()] {
            assert!(upstream_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", "x".repeat(33).as_str()] {
            assert!(upstream_name(bad).is_err(), "{bad}");
        }
        assert!(name("Acme_1-x").is_ok());
        assert!(name("a b").is_err() && name("").is_err() && name(&"a".repeat(64)).is_err());
        assert!(key_prefix("AbCd1234").is_ok() && key_prefix("AbCd123").is_err());
    }

    #[test]
    fn urls_and_headers() {
        assert!(upstream_url("http://127.0.0.1:9/mcp").is_ok());
        assert!(upstream_url("https://x").is_ok());
        assert!(upstream_url("http://x/a@b").is_ok());
        for bad in [
            "/mcp",
            "ftp://x",
            "http://",
            "http:///x",
            "http://a b",
            "https://user:pw@x/mcp",
        ] {
            assert!(upstream_url(bad).is_err(), "{bad}");
        }
        assert!(header("Authorization", "Bearer x").is_ok());
        assert!(header("Bad Name", "x").is_err());
        assert!(header("X", "a\r\nInjected: 1").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let r = pb::Resource {
            resource: Some(R::Upstream(pb::Upstream {
                name: "ok".into(),
                url: "nope".into(),
                ..Default::default()
            })),
        };
        let e = validate(&r).unwrap_err();
        assert_eq!(e.field, "upstream.url");
        let s = pb::Resource {
            resource: Some(R::Subscription(pb::Subscription {
                name: "s".into(),
                tenant: "t".into(),
                upstream: "u".into(),
                ..Default::default()
            })),
        };
        assert_eq!(validate(&s).unwrap_err().field, "subscription.tools");
        assert_eq!(
            validate(&pb::Resource { resource: None })
                .unwrap_err()
                .field,
            "resource"
        );
    }
}
