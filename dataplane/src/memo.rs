//! What a connection remembers between its requests: the last secret it
//! proved (an API key, a sealed session id) and what proving it gave, valid
//! only under the scope it was proved in (a config snapshot, a set of
//! session keys).
//!
//! The scope is held weakly: its allocation cannot be reused for a new
//! scope while the memo points at it, so a new snapshot (a revocation) or
//! rotated keys are never mistaken for the old ones, and the old ones are
//! not kept alive. The secret stays in the connection's own memory, as its
//! request headers do, and is compared in constant time.

use std::sync::{Arc, Mutex, Weak};

pub struct Memo<S, V>(Mutex<Option<Entry<S, V>>>);

struct Entry<S, V> {
    scope: Weak<S>,
    secret: Box<[u8]>,
    value: Arc<V>,
}

impl<S, V> Default for Memo<S, V> {
    fn default() -> Self {
        Memo(Mutex::new(None))
    }
}

impl<S, V> Memo<S, V> {
    /// What `secret` gave under `scope`, if it is the one remembered.
    pub fn recall(&self, scope: &Arc<S>, secret: &[u8]) -> Option<Arc<V>> {
        let guard = self.0.lock().ok()?;
        let e = guard.as_ref()?;
        (std::ptr::eq(e.scope.as_ptr(), Arc::as_ptr(scope))
            && constant_time_eq::constant_time_eq(&e.secret, secret))
        .then(|| e.value.clone())
    }

    /// What `secret` gives under `scope`: remembered, or found by `prove`
    /// and then remembered.
    pub fn recall_or<E>(
        &self,
        scope: &Arc<S>,
        secret: &[u8],
        prove: impl FnOnce() -> Result<Arc<V>, E>,
    ) -> Result<Arc<V>, E> {
        if let Some(v) = self.recall(scope, secret) {
            return Ok(v);
        }
        let v = prove()?;
        self.remember(scope, secret, &v);
        Ok(v)
    }

    fn remember(&self, scope: &Arc<S>, secret: &[u8], value: &Arc<V>) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = Some(Entry {
                scope: Arc::downgrade(scope),
                secret: secret.into(),
                value: value.clone(),
            });
        }
    }
}
