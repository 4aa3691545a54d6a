//! Bearer tokens for admin clients and gateways. Only SHA-256 hashes are
//! stored; a token is printed once, when it is made.

use ring::digest;
use stoa_proto::pb;
use tonic::{Request, Status, metadata::MetadataMap};

use crate::store::{Actor, Store};

pub const ADMIN: &str = "admin";
pub const GATEWAY: &str = "gateway";

pub fn hash(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `n` characters of `[A-Za-z0-9]`, uniformly (rejection sampling).
pub fn random_alnum(n: usize) -> String {
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        ring::rand::SecureRandom::fill(&rng, &mut buf).expect("OS random source");
        for b in buf {
            // 248 = 4 * 62: keep the draw uniform.
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A new token: `stoa-<role>-<43 characters>` (about 256 bits).
pub fn generate(role: &str) -> String {
    format!("stoa-{role}-{}", random_alnum(43))
}

/// A new API key: `stoa_<8 prefix>_<32 secret>`, the gateway's format.
pub fn generate_api_key() -> (String, String) {
    let prefix = random_alnum(8);
    let key = format!("stoa_{prefix}_{}", random_alnum(32));
    (prefix, key)
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
    fn keys_have_the_gateway_format() {
        let (prefix, key) = generate_api_key();
        assert_eq!(prefix.len(), 8);
        assert!(key.starts_with(&format!("stoa_{prefix}_")));
        assert_eq!(key.len(), 5 + 8 + 1 + 32);
        assert_ne!(generate(ADMIN), generate(ADMIN));
    }
}
