//! `cargo xtask pgo`: a gateway built with profile-guided optimization.
//!
//! Three steps, each in its own build directory under `<target>/pgo` (the
//! flags differ, and sharing the main directory would rebuild the world
//! each time):
//!
//! 1. build a gateway instrumented to count what its code does
//!    (`-Cprofile-generate`);
//! 2. train it: the reference upstream behind it, `tools/call` over h1,
//!    h2c, h2 (TLS) and h3, on one upstream's endpoint and on the
//!    aggregated one, then a graceful stop, which writes the counts;
//! 3. merge the counts (`llvm-profdata`, from rustup's `llvm-tools`) and
//!    build again with them (`-Cprofile-use`): LLVM lays the hot path out
//!    together, inlines where calls are hot and keeps cold code out of the
//!    way.
//!
//! `--target <host>` keeps the flags off build scripts and proc macros.
//! The result is copied to `<target>/pgo/stoa-gateway`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{bench, cargo, demo, procs::Procs, sh};

/// Builds the PGO gateway and returns its path. `bin` holds the release
/// build of the reference upstream and the load generator.
pub fn build(bin: &Path) -> anyhow::Result<PathBuf> {
    let base = demo::target_dir().join("pgo");
    let profiles = base.join("profiles");
    let _ = std::fs::remove_dir_all(&profiles);
    std::fs::create_dir_all(&profiles)?;
    let host = host_triple()?;
    let profdata_tool = llvm_profdata(&host)?;

    let instrumented = build_gateway(
        &base.join("gen"),
        &host,
        &format!("-Cprofile-generate={}", profiles.display()),
    )?;
    train(&instrumented, bin, &base, &profiles)?;

    let merged = base.join("gateway.profdata");
    let mut merge = Command::new(&profdata_tool);
    merge.arg("merge").arg("-o").arg(&merged).arg(&profiles);
    sh(&mut merge)?;

    let optimized = build_gateway(
        &base.join("use"),
        &host,
        &format!("-Cprofile-use={}", merged.display()),
    )?;
    let out = base.join("stoa-gateway");
    std::fs::copy(&optimized, &out).with_context(|| format!("copying to {}", out.display()))?;
    eprintln!("pgo: the optimized gateway is {}", out.display());
    Ok(out)
}

fn build_gateway(dir: &Path, host: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(f) if !f.trim().is_empty() => format!("{f} {flag}"),
        _ => flag.to_owned(),
    };
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--release", "--target", host])
        .args(["-p", "stoa-gateway", "--bin", "stoa-gateway"])
        .env("CARGO_TARGET_DIR", dir)
        .env("RUSTFLAGS", rustflags);
    sh(&mut cmd)?;
    Ok(dir.join(host).join("release/stoa-gateway"))
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8(out.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no host in rustc -vV")
}

/// rustup's `llvm-profdata`, which matches the compiler's LLVM; installed
/// (`rustup component add llvm-tools`) when missing.
fn llvm_profdata(host: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let tool = sysroot
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        sh(Command::new("rustup").args(["component", "add", "llvm-tools"]))
            .context("installing llvm-tools (rustup), which has llvm-profdata")?;
    }
    if !tool.exists() {
        bail!("{} is missing after installing llvm-tools", tool.display());
    }
    Ok(tool)
}

/// The training run: the calls the bench measures, over every protocol.
fn train(gateway: &Path, bin: &Path, base: &Path, profiles: &Path) -> anyhow::Result<()> {
    let mut procs = Procs(Vec::new());
    let (reference, direct) = demo::start_reference(bin, Stdio::null())?;
    procs.0.push(reference);

    let key = bench::gen_key(gateway)?;
    let config = base.join("train.yaml");
    std::fs::write(&config, bench::gateway_yaml("", base, &direct, &key))?;
    let key = key.key;
    let ready = base.join("train.ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut gw = Command::new(gateway)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "warn")
        .env(
            "LLVM_PROFILE_FILE",
            profiles.join("gateway-%p.profraw").as_os_str(),
        )
        .stderr(std::fs::File::create(base.join("train.log"))?)
        .spawn()
        .context("starting the instrumented gateway")?;
    let bound = bench::wait_file(&ready)?;
    let field_of = |k: &str| bench::ready_field(&bound, k);
    let plain = field_of("plain")?;
    let tls_port = field_of("tls")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let ca = field_of("ca")?;

    let trained = (|| -> anyhow::Result<()> {
        for (path, tool) in [("/mcp/reference", "echo"), ("/mcp", "reference__echo")] {
            for (url, http) in [
                (format!("http://{plain}{path}"), "1"),
                (format!("http://{plain}{path}"), "2"),
                (format!("https://localhost:{tls_port}{path}"), "2"),
                (format!("https://127.0.0.1:{tls_port}{path}"), "3"),
            ] {
                let out = Command::new(bin.join("stoa-load"))
                    .args(["--url", &url, "--http", http, "--key", &key, "--ca", &ca])
                    .args(["--tool", tool, "--concurrency", "8"])
                    .args(["--duration", "3s", "--warmup", "1s"])
                    .output()?;
                let s = String::from_utf8_lossy(&out.stdout);
                // Train on answered calls only: errors would teach the
                // compiler that the refusal paths are hot.
                if !out.status.success() || !s.contains("\"errors\":0,") {
                    bail!(
                        "training load on {url} (HTTP/{http}) failed: {s} {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                eprintln!("pgo: trained on {url} over HTTP/{http}");
            }
        }
        Ok(())
    })();
    // A graceful stop: the counts are written when the process exits.
    let _ = Command::new("kill")
        .args(["-TERM", &gw.id().to_string()])
        .status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = gw.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = gw.kill();
            bail!("the instrumented gateway did not stop within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    trained?;
    if !status.success() {
        bail!("the instrumented gateway exited with {status}");
    }
    let written = std::fs::read_dir(profiles)?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "profraw"));
    if !written {
        bail!("no profile was written to {}", profiles.display());
    }
    Ok(())
}
