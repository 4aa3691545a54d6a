//! API keys and bearer tokens, as both planes make and check them. An API
//! key is `stoa_<prefix>_<secret>`: the prefix finds the key's record, and
//! only the SHA-256 of the whole key is ever stored.

use ring::{digest, rand::SecureRandom};

/// Characters of a generated prefix.
pub const PREFIX_LEN: usize = 8;
/// Characters of a generated secret (about 190 bits).
pub const SECRET_LEN: usize = 32;
/// The shortest secret a presented key may have.
const MIN_SECRET_LEN: usize = 16;

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A key just made. `key` is shown once, to whoever asked for it; the
/// prefix and `sha256(key)` are what is stored.
pub struct NewKey {
    pub key: String,
    pub prefix: String,
}

impl NewKey {
    pub fn generate() -> NewKey {
        let prefix = random_alnum(PREFIX_LEN);
        let key = format!("stoa_{prefix}_{}", random_alnum(SECRET_LEN));
        NewKey { key, prefix }
    }
}

/// The prefix and secret of a presented key, if it has a key's shape (the
/// prefix is checked further by whoever looks it up).
pub fn split(key: &str) -> Option<(&str, &str)> {
    let (prefix, secret) = key.strip_prefix("stoa_")?.split_once('_')?;
    (secret.len() >= MIN_SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some((prefix, secret))
}

/// What is stored of a key or token.
pub fn sha256(text: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, text.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `n` characters of `[A-Za-z0-9]`, uniformly, from the OS random source.
pub fn random_alnum(n: usize) -> String {
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill(&mut buf).expect("the OS random source works");
        // Rejection sampling: 248 = 4 * 62 keeps the draw uniform.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_format_and_split_back() {
        let a = NewKey::generate();
        let b = NewKey::generate();
        assert_ne!(a.key, b.key);
        assert_eq!(a.prefix.len(), PREFIX_LEN);
        assert_eq!(a.key.len(), "stoa_".len() + PREFIX_LEN + 1 + SECRET_LEN);
        let (prefix, secret) = split(&a.key).unwrap();
        assert_eq!(prefix, a.prefix);
        assert_eq!(secret.len(), SECRET_LEN);
    }

    #[test]
    fn malformed_keys_do_not_split() {
        for bad in [
            "",
            "stoa_",
            "stoa_abc",
            "stoa_abc_short",
            "stoa_abc_0123456789abcdef!",
            "other_abc_0123456789abcdef",
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
        assert!(split("stoa_abc_0123456789abcdef").is_some());
    }
}
