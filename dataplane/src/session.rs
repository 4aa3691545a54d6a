//! Sessions without stickiness: everything a replica needs to continue a
//! session (the upstream session ids, the negotiated protocol versions, the
//! key it belongs to) travels inside the gateway's `Mcp-Session-Id`, sealed
//! with ChaCha20-Poly1305 under a key all replicas share. No replica keeps
//! session state, so any replica can serve any request of any session.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};

const TAG: &str = "s1.";
const AAD: &[u8] = b"stoa-session-v1";

/// What a sealed session id carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// Prefix of the API key that opened the session: no other key may use it.
    #[serde(rename = "k")]
    pub key: String,
    /// Unix seconds when the session was opened.
    #[serde(rename = "t")]
    pub issued: u64,
    /// Protocol version negotiated with the client.
    #[serde(rename = "v")]
    pub version: String,
    /// One entry per upstream in the session.
    #[serde(rename = "u")]
    pub upstreams: Vec<UpstreamSession>,
    /// The client capabilities its requests carry to upstreams that speak
    /// 2026-07-28 (which take them in every request), when it has any such.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub client_caps: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSession {
    #[serde(rename = "n")]
    pub name: String,
    /// The upstream's own `Mcp-Session-Id`, if it issued one.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Protocol version the upstream agreed to.
    #[serde(rename = "v")]
    pub version: String,
}

impl SessionState {
    pub fn upstream(&self, name: &str) -> Option<&UpstreamSession> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("session key must be 32 bytes of base64")]
    BadKey,
    #[error("session id is malformed or was not issued by this platform")]
    Invalid,
    #[error("session expired")]
    Expired,
}

/// The current sealing key and the older keys still accepted.
pub struct SessionKeys {
    keys: Vec<LessSafeKey>,
    ttl_secs: u64,
    rng: SystemRandom,
    /// Session ids this process already opened: a session's requests skip
    /// decryption and parsing after the first. Only a cache: a replica that
    /// has not seen an id opens it the long way. It lives and dies with the
    /// keys, so a rotation never serves a stale entry.
    opened: Mutex<HashMap<Box<str>, Arc<SessionState>>>,
}

/// Entries the cache holds before it starts over.
const CACHE_MAX: usize = 8192;

impl SessionKeys {
    pub fn new(current: [u8; 32], previous: &[[u8; 32]], ttl_secs: u64) -> Self {
        let keys = std::iter::once(&current)
            .chain(previous)
            .map(|k| LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte key")))
            .collect();
        SessionKeys {
            keys,
            ttl_secs,
            rng: SystemRandom::new(),
            opened: Mutex::new(HashMap::new()),
        }
    }

    pub fn random(ttl_secs: u64) -> Self {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .expect("the OS random source works");
        Self::new(k, &[], ttl_secs)
    }

    pub fn decode_key(b64: &str) -> Result<[u8; 32], SealError> {
        use base64::engine::general_purpose::STANDARD;
        let raw = STANDARD
            .decode(b64.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim()))
            .map_err(|_| SealError::BadKey)?;
        raw.try_into().map_err(|_| SealError::BadKey)
    }

    pub fn seal(&self, state: &SessionState) -> String {
        let mut buf = serde_json::to_vec(state).expect("session state serializes");
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the OS random source works");
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            )
            .expect("sealing cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(nonce.len() + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        format!("{TAG}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// `open`, first asking the connection's memo: a connection usually
    /// presents the same session id on every request.
    pub fn open_with(
        self: &Arc<Self>,
        id: &[u8],
        now: u64,
        memo: Option<&Memo>,
    ) -> Result<Arc<SessionState>, SealError> {
        let open = || {
            let id = crate::headers::text(id).ok_or(SealError::Invalid)?;
            self.open_any_age(id)
        };
        let state = match memo {
            Some(m) => m.recall_or(self, id, open)?,
            None => open()?,
        };
        self.unexpired(state, now)
    }

    fn unexpired(
        &self,
        state: Arc<SessionState>,
        now: u64,
    ) -> Result<Arc<SessionState>, SealError> {
        if now.saturating_sub(state.issued) > self.ttl_secs {
            return Err(SealError::Expired);
        }
        Ok(state)
    }

    /// Opens a session id presented by a client at unix time `now`.
    pub fn open(&self, id: &str, now: u64) -> Result<Arc<SessionState>, SealError> {
        self.unexpired(self.open_any_age(id)?, now)
    }

    /// The state sealed in `id`, however old (from the cache if it was
    /// opened before).
    fn open_any_age(&self, id: &str) -> Result<Arc<SessionState>, SealError> {
        let cached = self.cache().get(id).cloned();
        let state = match cached {
            Some(s) => s,
            None => {
                let s = Arc::new(self.open_sealed(id)?);
                let mut cache = self.cache();
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(id.into(), s.clone());
                s
            }
        };
        Ok(state)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<SessionState>>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.opened
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open_sealed(&self, id: &str) -> Result<SessionState, SealError> {
        let raw = id
            .strip_prefix(TAG)
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .ok_or(SealError::Invalid)?;
        if raw.len() < aead::NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Invalid);
        }
        let (nonce, sealed) = raw.split_at(aead::NONCE_LEN);
        for key in &self.keys {
            let mut buf = sealed.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Invalid)?;
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(AAD), &mut buf) {
                return serde_json::from_slice(plain).map_err(|_| SealError::Invalid);
            }
        }
        Err(SealError::Invalid)
    }
}

/// The last session id a connection opened, for the keys that opened it.
pub type Memo = crate::memo::Memo<SessionKeys, SessionState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        SessionState {
            key: "AAAAbbbb".into(),
            issued: 1000,
            version: "2025-11-25".into(),
            upstreams: vec![UpstreamSession {
                name: "ref".into(),
                session: Some("abc-123".into()),
                version: "2025-06-18".into(),
            }],
            client_caps: None,
        }
    }

    #[test]
    fn a_memo_answers_only_for_its_keys_and_never_past_the_ttl() {
        let keys = Arc::new(SessionKeys::new([7; 32], &[], 60));
        let memo = Memo::default();
        let id = keys.seal(&state());
        assert_eq!(
            *keys.open_with(id.as_bytes(), 1010, Some(&memo)).unwrap(),
            state()
        );
        assert!(memo.recall(&keys, id.as_bytes()).is_some());
        assert!(memo.recall(&keys, b"stoa1.other").is_none());
        assert!(matches!(
            keys.open_with(id.as_bytes(), 1061, Some(&memo)),
            Err(SealError::Expired)
        ));
        // Rotated away: new keys that do not open the old id.
        let rotated = Arc::new(SessionKeys::new([9; 32], &[], 60));
        assert!(memo.recall(&rotated, id.as_bytes()).is_none());
        assert!(rotated.open_with(id.as_bytes(), 1010, Some(&memo)).is_err());
    }

    #[test]
    fn round_trip_across_replicas_sharing_the_key() {
        let a = SessionKeys::new([7; 32], &[], 60);
        let b = SessionKeys::new([7; 32], &[], 60);
        let id = a.seal(&state());
        assert!(
            id.bytes().all(|c| (0x21..=0x7e).contains(&c)),
            "visible ASCII only"
        );
        assert_eq!(*b.open(&id, 1010).unwrap(), state());
        assert_eq!(
            *b.open(&id, 1011).unwrap(),
            state(),
            "a second open (cached) agrees"
        );
        assert_ne!(a.seal(&state()), id, "fresh nonce every time");
    }

    #[test]
    fn rotation_tamper_expiry() {
        let old = SessionKeys::new([1; 32], &[], 60);
        let rotated = SessionKeys::new([2; 32], &[[1; 32]], 60);
        let stranger = SessionKeys::new([3; 32], &[], 60);
        let id = old.seal(&state());
        assert!(rotated.open(&id, 1000).is_ok());
        assert_eq!(stranger.open(&id, 1000), Err(SealError::Invalid));
        assert_eq!(old.open(&id, 1061), Err(SealError::Expired));
        assert!(
            old.open(&id, 1000).is_ok(),
            "expiry is checked on cached sessions too"
        );
        assert_eq!(old.open(&id, 1061), Err(SealError::Expired));
        let mut bytes = id.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            old.open(&String::from_utf8(bytes).unwrap(), 1000),
            Err(SealError::Invalid)
        );
        for junk in ["", "s1.", "s1.!!!", "plain-upstream-id"] {
            assert_eq!(old.open(junk, 1000), Err(SealError::Invalid), "{junk}");
        }
    }
}
