//! Child processes a command starts and stops with it.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Processes stopped when dropped, last started first.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    /// SIGTERM first, then SIGKILL whatever is left after 3 s: nginx's
    /// master only takes its worker processes down when asked to stop (a
    /// SIGKILL orphans them, still holding the port), and the gateways
    /// drain.
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in self.0.iter_mut().rev() {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
