//! `cargo xtask …`: the project's automation, in Rust.
//!
//! - `ci`: install what the tests need, then fmt, clippy and every test.
//! - `demo`: run the platform on embedded defaults and show a real tool call.
//! - `bench`: open-loop load through the gateway vs direct vs nginx; config
//!   propagation from the control plane to a fleet of gateways.
//! - `pgo`: build the gateway with profile-guided optimization.
//! - `tools`: only install the test tools (npm, PyPI, Node 22, conformance suite).

mod bench;
mod demo;
mod pgo;
mod procs;
mod propagation;
mod tools;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install test tools, then check formatting, lints and run all tests.
    Ci,
    /// Run the platform (control plane, gateways, reference upstream), make a real MCP tool call, keep running.
    Demo(demo::Args),
    /// Benchmark tools/call through the gateway against direct and nginx.
    Bench(bench::Args),
    /// Build the gateway with profile-guided optimization (trained on the bench's calls) into target/pgo/stoa-gateway.
    Pgo,
    /// Install the test tools only (what `ci` installs).
    Tools,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Ci => ci(),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Pgo => pgo::build(&demo::build_binaries(true)?).map(|_| ()),
        Cmd::Tools => tools::install().map(|_| ()),
    }
}

/// The workspace this xtask was run from. `cargo run` (the `cargo xtask`
/// alias) sets `CARGO_MANIFEST_DIR` when it runs the binary; the value
/// compiled in is only a fallback, since cargo does not rebuild a binary
/// whose workspace moved, and a build directory shared by several clones
/// (as `.ci/run`'s is) would otherwise send every clone to the one that
/// built it.
pub fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, failing with its name if it fails.
pub fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> anyhow::Result<()> {
    let tools = tools::install()?;
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--", "--nocapture"]);
    tools.export(&mut test);
    sh(&mut test)?;
    // The README's first command must stay true: run the demo once, on free ports.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    };
    demo::run(demo::Args::once(free)?)?;
    eprintln!("ci: all green");
    Ok(())
}
