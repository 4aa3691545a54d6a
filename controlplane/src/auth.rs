//! Bearer tokens for admin clients and gateways. Only SHA-256 hashes are
//! stored; a token is printed once, when it is made.

use stoa_proto::pb;
use tonic::{Request, Status, metadata::MetadataMap};

use crate::store::{Actor, Store};

pub const ADMIN: &str = "admin";
pub const GATEWAY: &str = "gateway";

pub use stoa_proto::keys::sha256 as hash;

/// A new token: `stoa-<role>-<43 characters>` (about 256 bits).
pub fn generate(role: &str) -> String {
    format!("stoa-{role}-{}", stoa_proto::keys::random_alnum(43))
}

fn bearer(meta: &MetadataMap) -> Option<&str> {
    let v = meta.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller of `req`, if it holds a token of `role`.
pub async fn caller<T>(store: &Store, req: &Request<T>, role: &str) -> Result<Actor, Status> {
    let token = bearer(req.metadata()).ok_or_else(|| {
        Status::unauthenticated(format!("send `authorization: Bearer <{role} token>`"))
    })?;
    let name = store
        .token(&hash(token), role)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?
        .ok_or_else(|| Status::unauthenticated(format!("not a valid {role} token")))?;
    Ok(Actor {
        name,
        source: req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
    })
}

/// Makes sure a token of `role` exists: `given` (from the environment or a
/// flag) is stored; with none given and none stored, one is made and
/// returned so that the caller can print it, once.
pub async fn bootstrap(
    store: &Store,
    role: &str,
    given: Option<&str>,
) -> Result<Option<String>, crate::store::StoreError> {
    if let Some(t) = given {
        store
            .add_token(&format!("bootstrap-{role}"), role, &hash(t))
            .await?;
        return Ok(None);
    }
    if store.has_tokens(role).await? {
        return Ok(None);
    }
    let t = generate(role);
    store
        .add_token(&format!("bootstrap-{role}"), role, &hash(&t))
        .await?;
    Ok(Some(t))
}

/// The rejections of a NACK as a one-line summary, for logs.
pub fn summary(rejected: &[pb::Rejection]) -> String {
    rejected
        .iter()
        .map(|r| match &r.resource {
            Some(rf) => format!("{rf}: {}", r.reason),
            None => r.reason.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_long() {
        let (a, b) = (generate(ADMIN), generate(ADMIN));
        assert_ne!(a, b);
        assert_eq!(a.len(), "stoa-admin-".len() + 43);
    }
}
