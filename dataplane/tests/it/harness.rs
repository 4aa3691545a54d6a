//! Real processes for integration tests: the gateway binary with a config
//! written per test, the reference upstream, `server-everything` (npm), and
//! deliberately broken upstreams.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use stoa_gateway::auth;

pub use stoa_loadtest::testkit::{Proc, eventually, temp_dir};

/// An API key made for a test, with what goes into the config.
#[derive(Clone)]
pub struct Key {
    pub secret: String,
    pub prefix: String,
    pub hash: String,
}

impl Key {
    pub fn new() -> Self {
        let k = stoa_proto::keys::NewKey::generate();
        Key {
            hash: auth::hash_key(&k.key),
            secret: k.key,
            prefix: k.prefix,
        }
    }
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

/// The reference upstream, served in this test process on its own runtime thread.
pub struct Reference {
    pub url: String,
    _rt: std::thread::JoinHandle<()>,
}

impl Reference {
    pub fn start(force_version: Option<&str>) -> Reference {
        Self::with(stoa_loadtest::reference::Options {
            force_version: force_version.map(str::to_owned),
            ..Default::default()
        })
    }

    /// One that sends every change on a listen stream, asked for or not.
    pub fn ignoring_listen_filters() -> Reference {
        Self::with(stoa_loadtest::reference::Options {
            ignore_listen_filter: true,
            ..Default::default()
        })
    }

    /// One that speaks only 2026-07-28, as a modern-only server does.
    pub fn stateless_only() -> Reference {
        Self::with(stoa_loadtest::reference::Options {
            stateless_only: true,
            ..Default::default()
        })
    }

    fn with(opts: stoa_loadtest::reference::Options) -> Reference {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(l.local_addr().expect("addr")).expect("send addr");
                let _ = stoa_loadtest::reference::serve(l, opts).await;
            });
        });
        let addr = rx.recv().expect("reference upstream started");
        Reference {
            url: format!("http://{addr}/mcp"),
            _rt: handle,
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `@modelcontextprotocol/server-everything` in Streamable HTTP mode.
pub async fn everything() -> (Proc, String) {
    everything_on(free_port()).await
}

/// `everything` on a given port (e.g. again where one was stopped: a
/// restarted upstream, which has forgotten every session).
pub async fn everything_on(port: u16) -> (Proc, String) {
    let dir = node_clients();
    let child = Command::new("node")
        .arg(dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node server-everything (run `cargo xtask tools`)");
    let proc = Proc {
        child,
        name: "server-everything".into(),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    eventually(
        "server-everything to listen",
        Duration::from_secs(30),
        || async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await;
    (proc, format!("http://127.0.0.1:{port}/mcp"))
}

pub fn node_clients() -> PathBuf {
    let dir = std::env::var_os("STOA_NODE_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients"));
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").exists(),
        "the MCP SDK clients are not installed: run `cargo xtask tools` (or `cargo xtask ci`)"
    );
    dir
}

pub fn python() -> PathBuf {
    let p = std::env::var_os("STOA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/root".into());
            home.join(".cache/stoa-tools/venv/bin/python")
        });
    assert!(
        p.exists(),
        "Python with the MCP SDK is missing at {}: run `cargo xtask tools`",
        p.display()
    );
    p
}

/// Upstream name → granted tool names (`*` for all).
pub type Grants = Vec<(String, Vec<String>)>;

/// What a test puts in the gateway's config.
pub struct GatewaySpec {
    pub upstreams: Vec<(String, String)>,
    pub keys: Vec<(Key, Grants)>,
    pub tls: bool,
    pub extra: String,
    pub session_key: Option<String>,
    /// `listeners.workers`; the gateway's default when `None`.
    pub workers: Option<usize>,
}

impl GatewaySpec {
    /// One key granted every tool of every upstream.
    pub fn open(upstreams: &[(&str, &str)]) -> (GatewaySpec, Key) {
        let key = Key::new();
        let grants = upstreams
            .iter()
            .map(|(n, _)| (n.to_string(), vec!["*".to_string()]))
            .collect();
        (
            GatewaySpec {
                upstreams: upstreams
                    .iter()
                    .map(|(n, u)| (n.to_string(), u.to_string()))
                    .collect(),
                keys: vec![(key.clone(), grants)],
                tls: false,
                extra: String::new(),
                session_key: None,
                workers: None,
            },
            key,
        )
    }

    pub fn yaml(&self, dir: &Path) -> String {
        let mut y = String::from("listeners:\n  plain: 127.0.0.1:0\n");
        if let Some(n) = self.workers {
            y.push_str(&format!("  workers: {n}\n"));
        }
        if self.tls {
            y.push_str(&format!(
                "  tls: {{addr: 127.0.0.1:0, dev_cert_dir: {:?}}}\n",
                dir.join("tls")
            ));
        }
        y.push_str("watch_interval: 100ms\n");
        if let Some(k) = &self.session_key {
            y.push_str(&format!("sessions: {{key: \"{k}\"}}\n"));
        }
        y.push_str(&self.extra);
        y.push_str("\ntenants: [{name: acme}]\nupstreams:\n");
        for (n, u) in &self.upstreams {
            y.push_str(&format!("  - {{name: {n}, url: \"{u}\"}}\n"));
        }
        y.push_str("subscriptions:\n");
        for (i, (_, grants)) in self.keys.iter().enumerate() {
            for (up, tools) in grants {
                let tools: Vec<String> = tools.iter().map(|t| format!("{t:?}")).collect();
                y.push_str(&format!(
                    "  - {{name: k{i}-{up}, tenant: acme, upstream: {up}, tools: [{}]}}\n",
                    tools.join(", ")
                ));
            }
        }
        y.push_str("api_keys:\n");
        for (i, (key, grants)) in self.keys.iter().enumerate() {
            let subs: Vec<String> = grants.iter().map(|(up, _)| format!("k{i}-{up}")).collect();
            y.push_str(&format!(
                "  - {{name: key{i}, tenant: acme, prefix: {}, hash: \"{}\", subscriptions: [{}]}}\n",
                key.prefix,
                key.hash,
                subs.join(", ")
            ));
        }
        y
    }
}

/// A running gateway process.
pub struct Gateway {
    pub proc: Proc,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub bound: Value,
}

impl Gateway {
    pub async fn start(spec: &GatewaySpec) -> Gateway {
        let dir = temp_dir("gw");
        let config = dir.join("gateway.yaml");
        std::fs::write(&config, spec.yaml(&dir)).expect("write config");
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: PathBuf, config: PathBuf) -> Gateway {
        Self::start_with_env(dir, config, &[]).await
    }

    pub async fn start_with_env(dir: PathBuf, config: PathBuf, env: &[(&str, &str)]) -> Gateway {
        let ready = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(dir.join("gateway.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_stoa-gateway"))
            .args(["run", "--ready-file"])
            .arg(&ready)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,stoa_gateway=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stoa-gateway");
        let mut proc = Proc {
            child,
            name: "stoa-gateway".into(),
        };
        let ready2 = ready.clone();
        let bound = eventually("the gateway to be ready", Duration::from_secs(20), || {
            let exited = proc.child.try_wait().expect("try_wait");
            let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
            assert!(exited.is_none(), "gateway exited: {exited:?}\n{log}");
            let r = std::fs::read_to_string(&ready2)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok());
            async move { r }
        })
        .await;
        let _ = &mut proc;
        Gateway {
            proc,
            dir,
            config,
            bound,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "http://{}",
            self.bound["plain"].as_str().expect("plain listener")
        )
    }

    pub fn tls_url(&self) -> String {
        let addr: SocketAddr = self.bound["tls"]
            .as_str()
            .expect("tls listener")
            .parse()
            .expect("addr");
        format!("https://localhost:{}", addr.port())
    }

    pub fn ca(&self) -> PathBuf {
        PathBuf::from(self.bound["ca"].as_str().expect("dev CA"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics` on the plain listener.
    pub async fn metrics(&self) -> String {
        crate::http::Http::h1()
            .send(
                http::Method::GET,
                &format!("{}/metrics", self.url()),
                &[],
                None,
            )
            .await
            .body
    }
}
