//! What both planes' integration tests share: waiting for a condition,
//! scratch directories, and child processes that die with the test.

use std::{
    path::PathBuf,
    process::{Child, Command},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// Retries `f` until it returns `Some`, failing with `what` after `limit`.
/// Tests wait for conditions, never for fixed times.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A new, empty directory under the system's temp dir, unique to this
/// process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stoa-it-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Sends `sig` (`TERM`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {}", self.name);
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        eventually(&format!("{} to exit", self.name), limit, || {
            let r = self.child.try_wait().expect("try_wait");
            async move { r }
        })
        .await
    }
}
