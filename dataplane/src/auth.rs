//! API keys: `stoa_<prefix>_<secret>`. The prefix finds the key record; the
//! SHA-256 of the whole key is compared in constant time with the stored hash.

use std::sync::Arc;

use stoa_proto::keys;

use crate::{
    error::GatewayError,
    headers::{Headers, Name, text},
    model::{ApiKey, KeyPrefix, Snapshot},
};

/// Finds and checks the caller's key. Never logs the key. With a `memo`
/// (one per connection), a key this connection already proved against this
/// very snapshot is recognised by a constant-time comparison instead of a
/// new SHA-256.
pub fn authenticate(
    snap: &Arc<Snapshot>,
    headers: &Headers,
    memo: Option<&Memo>,
) -> Result<Arc<ApiKey>, GatewayError> {
    let presented = presented_key(headers).ok_or(GatewayError::MissingKey)?;
    match memo {
        Some(m) => m.recall_or(snap, presented, || verify(snap, presented)),
        None => verify(snap, presented),
    }
}

/// The last key a connection proved, for the snapshot it proved it against.
pub type Memo = crate::memo::Memo<Snapshot, ApiKey>;

fn verify(snap: &Snapshot, presented: &[u8]) -> Result<Arc<ApiKey>, GatewayError> {
    let presented = text(presented).ok_or(GatewayError::BadKey)?;
    let (prefix, _) = split_key(presented).ok_or(GatewayError::BadKey)?;
    let key = snap.keys.get(&prefix).ok_or(GatewayError::BadKey)?;
    if constant_time_eq::constant_time_eq(&keys::sha256(presented), &key.hash) {
        Ok(key.clone())
    } else {
        Err(GatewayError::BadKey)
    }
}

/// The key as sent: its bytes are compared with the connection's last
/// proved key before anything else is done with them.
fn presented_key(headers: &Headers) -> Option<&[u8]> {
    if let Some(v) = headers.get(Name::AUTHORIZATION) {
        let space = v.iter().position(|&b| b == b' ')?;
        let (scheme, token) = (&v[..space], &v[space + 1..]);
        return scheme
            .eq_ignore_ascii_case(b"bearer")
            .then(|| token.trim_ascii());
    }
    headers.get(Name::X_API_KEY).map(<[u8]>::trim_ascii)
}

fn split_key(key: &str) -> Option<(KeyPrefix, &str)> {
    let (prefix, secret) = keys::split(key)?;
    Some((KeyPrefix::parse(prefix).ok()?, secret))
}

/// `sha256:<hex>` of a whole key, as written in the config file.
pub fn hash_key(key: &str) -> String {
    let mut s = String::from("sha256:");
    for b in keys::sha256(key) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use stoa_proto::keys::NewKey;

    fn snapshot_with(key: &str, prefix: &str) -> Arc<Snapshot> {
        let yaml = format!(
            "tenants: [{{name: t}}]\napi_keys: [{{name: k, tenant: t, prefix: {prefix}, hash: \"{}\", subscriptions: []}}]",
            hash_key(key)
        );
        let (snap, rejected) = Snapshot::build(&FileConfig::parse(&yaml).unwrap());
        assert!(rejected.is_empty(), "{rejected:?}");
        Arc::new(snap)
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let NewKey { key, prefix } = NewKey::generate();
        let snap = snapshot_with(&key, &prefix);
        let bearer = format!("Bearer {key}");
        assert!(authenticate(&snap, &headers(&[("authorization", &bearer)]), None).is_ok());
        assert!(authenticate(&snap, &headers(&[("x-api-key", &key)]), None).is_ok());
    }

    #[test]
    fn refuses_missing_wrong_and_malformed() {
        let NewKey { key, prefix } = NewKey::generate();
        let snap = snapshot_with(&key, &prefix);
        assert!(matches!(
            authenticate(&snap, &headers(&[]), None),
            Err(GatewayError::MissingKey)
        ));
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
        for bad in [
            wrong.as_str(),
            "stoa_",
            "stoa_short_x",
            "Basic abc",
            "nonsense",
        ] {
            let r = authenticate(&snap, &headers(&[("x-api-key", bad)]), None);
            assert!(matches!(r, Err(GatewayError::BadKey)), "{bad}");
        }
    }

    #[test]
    fn a_memo_recalls_a_key_only_for_the_snapshot_it_was_proved_against() {
        let NewKey { key, prefix } = NewKey::generate();
        let snap = snapshot_with(&key, &prefix);
        let memo = Memo::default();
        let good = headers(&[("x-api-key", &key)]);
        assert!(authenticate(&snap, &good, Some(&memo)).is_ok());
        assert!(memo.recall(&snap, key.as_bytes()).is_some());
        // Same length, one character off: not recalled, and refused.
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });
        assert!(memo.recall(&snap, wrong.as_bytes()).is_none());
        assert!(matches!(
            authenticate(&snap, &headers(&[("x-api-key", &wrong)]), Some(&memo)),
            Err(GatewayError::BadKey)
        ));
        // The key is revoked: the next snapshot lacks it. The memo of the
        // old snapshot does not vouch for it.
        let NewKey {
            key: other,
            prefix: other_prefix,
        } = NewKey::generate();
        let revoked = snapshot_with(&other, &other_prefix);
        assert!(memo.recall(&revoked, key.as_bytes()).is_none());
        assert!(matches!(
            authenticate(&revoked, &good, Some(&memo)),
            Err(GatewayError::BadKey)
        ));
    }

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let NewKey { key: a, prefix: pa } = NewKey::generate();
        let b = NewKey::generate().key;
        assert_ne!(a, b);
        assert_eq!(split_key(&a).unwrap().0.as_str(), pa);
        assert_eq!(
            a.len(),
            "stoa_".len() + keys::PREFIX_LEN + 1 + keys::SECRET_LEN
        );
    }
}
