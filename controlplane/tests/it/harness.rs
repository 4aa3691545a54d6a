//! Test harness: fresh databases for each test.

use std::sync::atomic::{AtomicU32, Ordering};

use stoa_control::store::Store;

/// The Postgres server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("STOA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

static N: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database URL of a new, empty database of this backend.
pub async fn fresh_database(backend: &str) -> String {
    match backend {
        "postgres" => {
            use sqlx::Connection as _;
            let name = unique("stoa_it");
            let mut c = sqlx::PgConnection::connect(&postgres_admin_url())
                .await
                .expect("Postgres at STOA_TEST_POSTGRES (default 127.0.0.1:5432) must be running");
            // Databases of earlier runs (other processes) go first.
            static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
            SWEPT
                .get_or_init(|| async {
                    let mine = format!("stoa_it_{}_%", std::process::id());
                    let old: Vec<String> = sqlx::query_scalar(
                        "SELECT datname FROM pg_database WHERE datname LIKE 'stoa_it_%' AND datname NOT LIKE $1",
                    )
                    .bind(mine)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_default();
                    for db in old {
                        let sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                        let _ = sqlx::Executor::execute(&mut c, sqlx::AssertSqlSafe(sql.as_str())).await;
                    }
                })
                .await;
            let sql = format!("CREATE DATABASE {name}");
            sqlx::Executor::execute(&mut c, sqlx::AssertSqlSafe(sql.as_str()))
                .await
                .unwrap();
            let base = postgres_admin_url();
            let root = &base[..base.rfind('/').unwrap()];
            format!("{root}/{name}")
        }
        "sqlite" => {
            let dir = std::env::temp_dir().join(unique("stoa-it"));
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}", dir.join("stoa.db").display())
        }
        other => panic!("unknown backend {other}"),
    }
}

pub async fn fresh_store(backend: &str) -> Store {
    Store::open(&fresh_database(backend).await).await.unwrap()
}

/// One test body, run once against each backend.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn postgres() {
                let store = $crate::harness::fresh_store("postgres").await;
                ($body)(store).await;
            }
            #[tokio::test]
            async fn sqlite() {
                let store = $crate::harness::fresh_store("sqlite").await;
                ($body)(store).await;
            }
        }
    };
}

// ---- The platform as real processes ----------------------------------------

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

pub const ADMIN_TOKEN: &str = "it-admin-token";
pub const GATEWAY_TOKEN: &str = "it-gateway-token";

pub use stoa_loadtest::testkit::{Proc, eventually, temp_dir};

/// A free port below Linux's ephemeral range (32768 and up), so that a
/// control plane restarted on it does not find it taken by some outgoing
/// connection in the meantime (a port 0 bind picks from that range).
fn fixed_port() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 6_000;
    loop {
        let n = start + NEXT.fetch_add(1, Ordering::Relaxed) * 7;
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + (n % 12_000) as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

async fn ready_file(path: &Path, proc: &mut Proc) -> Value {
    eventually(
        &format!("{} to start", proc.name),
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("{} exited early: {status}", proc.name);
            }
            let v = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok());
            async move { v }
        },
    )
    .await
}

/// The gateway binary lives in another package: build it (a no-op when
/// fresh) next to this test binary and return its path.
pub fn gateway_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "stoa-gateway",
                "--bin",
                "stoa-gateway",
            ]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo build stoa-gateway");
            assert!(status.success(), "building stoa-gateway failed");
            profile_dir.join("stoa-gateway")
        })
        .clone()
}

pub struct ControlPlane {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub xds: SocketAddr,
    dir: PathBuf,
}

impl ControlPlane {
    /// Starts `stoa-control` on `database_url`; `ports` reuses the ports of
    /// an earlier run (a restart), otherwise free ones are taken.
    pub async fn start(
        database_url: &str,
        ports: Option<(SocketAddr, SocketAddr)>,
    ) -> ControlPlane {
        let dir = temp_dir("cp");
        let ready = dir.join("ready.json");
        let (admin, xds) = ports.unwrap_or_else(|| (fixed_port(), fixed_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_stoa-control"))
            .args(["--database-url", database_url])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--xds-listen", &xds.to_string()])
            .args(["--poll-interval", "500ms", "--catalog-refresh", "0s"])
            .arg("--ready-file")
            .arg(&ready)
            .env("STOA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STOA_GATEWAY_TOKEN", GATEWAY_TOKEN)
            .env("STOA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("control.log")).unwrap())
            .spawn()
            .expect("stoa-control");
        let mut proc = Proc {
            child,
            name: "stoa-control".into(),
        };
        let v = ready_file(&ready, &mut proc).await;
        ControlPlane {
            proc,
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            xds: v["xds"].as_str().unwrap().parse().unwrap(),
            dir,
        }
    }

    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds)
    }

    /// Runs `stoactl` against this control plane; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_ctl(args);
        assert!(ok, "stoactl {args:?} failed: {err}");
        out
    }

    /// Runs `stoactl`: (success, stdout, stderr).
    pub fn try_ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_stoactl"))
            .args(["--server", &format!("http://{}", self.admin)])
            .args(args)
            .env("STOA_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("stoactl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    /// `stoactl -o json …`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ctl(&all)).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.log")).unwrap_or_default()
    }

    /// Kills the process at once (no graceful stop): an outage.
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

pub struct Gateway {
    _proc: Proc,
    pub addr: SocketAddr,
    pub id: String,
    pub dir: PathBuf,
}

impl Gateway {
    /// A gateway fed by the control plane at `xds_url`, with a cache file
    /// in `dir` (so a restart with the same `dir` finds it).
    pub fn spawn(xds_url: &str, id: &str, dir: &Path) -> (Proc, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "listeners: {{plain: \"127.0.0.1:0\"}}\n\
                 control_plane:\n  url: \"{xds_url}\"\n  gateway_id: {id}\n  cache_file: \"{}\"\n  backoff_min: 50ms\n  backoff_max: 500ms\n",
                dir.join("config.cache").display()
            ),
        )
        .unwrap();
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(gateway_binary())
            .args(["run", "--config"])
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .env("STOA_GATEWAY_TOKEN", GATEWAY_TOKEN)
            .env("STOA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("gateway.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("stoa-gateway");
        (
            Proc {
                child,
                name: format!("gateway {id}"),
            },
            ready,
        )
    }

    pub async fn start(xds_url: &str, id: &str, dir: &Path) -> Gateway {
        let (mut proc, ready) = Self::spawn(xds_url, id, dir);
        let v = ready_file(&ready, &mut proc).await;
        Gateway {
            _proc: proc,
            addr: v["plain"].as_str().unwrap().parse().unwrap(),
            id: id.to_owned(),
            dir: dir.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }
}

/// One HTTP/1.1 request; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, headers, body).await;
    (status, body)
}

/// One HTTP/1.1 request; returns status, head and body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new(), "connect failed".into());
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new(), "write failed".into());
    }
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).await.is_err() {
        return (0, String::new(), "read failed".into());
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// A `tools/call` of the reference upstream's `echo` through a gateway, on
/// the stateless revision (one request, no session).
pub async fn call_echo(gw: SocketAddr, key: &str) -> (u16, String) {
    let auth = format!("Bearer {key}");
    http(
        gw,
        "POST",
        "/mcp/ref",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ],
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#,
    )
    .await
}

/// The reference upstream, in this process on its own runtime thread.
pub fn reference() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let _ = stoa_loadtest::reference::serve(l, Default::default()).await;
        });
    });
    format!("http://{}/mcp", rx.recv().unwrap())
}
