//! Integrity-protected MRTR `requestState`.
//!
//! The state travels through the client, so it is sealed as
//! `base64url(payload) "." base64url(HMAC-SHA256(key, payload))` with a per-process
//! random key. The payload starts with the name of the tool (or prompt) that minted it,
//! so a state cannot be replayed against another tool.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

pub(crate) struct Sealer {
    key: hmac::Key,
}

/// The system random source failed; there is no safe fallback for a MAC key.
#[derive(Debug, thiserror::Error)]
#[error("system randomness unavailable")]
pub(crate) struct NoRandomness;

impl Sealer {
    pub fn random() -> Result<Sealer, NoRandomness> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| NoRandomness)?;
        Ok(Sealer::from_key(&key))
    }

    pub fn from_key(key: &[u8]) -> Sealer {
        Sealer {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Seals `data` for `owner` (a tool or prompt name).
    pub fn seal(&self, owner: &str, data: &str) -> String {
        let payload = format!("{owner}\n{data}");
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Returns the data sealed for `owner`, or `None` if the token was altered,
    /// forged, or minted for someone else.
    pub fn open(&self, owner: &str, token: &str) -> Option<String> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, &payload, &tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let (who, data) = payload.split_once('\n')?;
        (who == owner).then(|| data.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_key(b"test key, not secret")
    }

    #[test]
    fn round_trips() {
        let s = sealer();
        let token = s.seal("tool_a", "round:2:Alice");
        assert_eq!(s.open("tool_a", &token).as_deref(), Some("round:2:Alice"));
    }

    #[test]
    fn rejects_tampering() {
        let s = sealer();
        let token = s.seal("tool_a", "x");
        assert_eq!(s.open("tool_a", &format!("{token}-TAMPERED")), None);
        let (payload, tag) = token.split_once('.').expect("sealed form");
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode("tool_a\ny"));
        assert_eq!(s.open("tool_a", &forged), None);
        assert_eq!(s.open("tool_a", payload), None);
        assert_eq!(s.open("tool_a", ""), None);
    }

    #[test]
    fn binds_owner_and_key() {
        let s = sealer();
        let token = s.seal("tool_a", "x");
        assert_eq!(s.open("tool_b", &token), None);
        assert_eq!(
            Sealer::from_key(b"another key").open("tool_a", &token),
            None
        );
    }
}
