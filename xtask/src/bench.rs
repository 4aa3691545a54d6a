//! `cargo xtask bench`: `tools/call` through the gateway against the same
//! reference upstream called directly and through nginx (a plain reverse
//! proxy: the lean-proxy floor), all in one run, so ratios compare like
//! with like on this machine. The gateway is measured on `/mcp/reference`
//! (one upstream relayed) and, over h1, on `/mcp` (the aggregated virtual
//! server, the tool named `reference__echo`).
//!
//! For each path, each the median of `--rounds` runs taken in turn across
//! the paths: latency at concurrency 1 (closed loop, one connection),
//! saturation throughput (closed loop, `--concurrency` workers), and
//! latency under open-loop load at each of `--loads` (percent of
//! saturation), one rate per group of paths (h1; h2c, h2 and h3): that
//! share of the group's slowest saturation. Also, from `/proc`: the CPU
//! time per call of the proxy (or, on a direct path, of the upstream) over
//! the saturation rounds (`cpu µs`, and its user-space part, `user µs`),
//! steadier than req/s on a shared VM; and the generator's own CPU per call
//! in open loop (`gen µs`), what it takes from the cores the system under
//! test needs; and in open loop, how long the proxy's (or the upstream's)
//! threads were runnable but waited for a CPU, per call (`wait µs`, from
//! `schedstat`): on a machine that shares two cores between generator,
//! proxy and upstream, that wait, not the proxy's work, makes the tail.
//! Each kept run also shows the share of the machine's CPU time the
//! hypervisor gave to other guests while it ran (`steal %`, `/proc/stat`):
//! a run with much of it measured the host, not the path.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{procs::Procs, root, sh};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Workers for the saturation run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Runs per path and measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open-loop loads, in percent of saturation (comma-separated): each is
    /// one offered rate per group of paths.
    #[arg(long, value_delimiter = ',', default_value = "25,50")]
    loads: Vec<f64>,
    /// Also measure the gateway built with profile-guided optimization
    /// (`cargo xtask pgo`, built first) on h1, h2c and h3, beside the plain
    /// release build.
    #[arg(long)]
    pgo: bool,
    /// Skip nginx (e.g. where it cannot be installed).
    #[arg(long)]
    no_nginx: bool,
    /// `requests` (the relay), `propagation` (config to a fleet), or `all`.
    #[arg(long, default_value = "all")]
    suite: String,
    #[command(flatten)]
    propagation: crate::propagation::PropagationArgs,
}

#[derive(Debug, Clone)]
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    /// Open loop: how late the generator released requests (its own lag).
    lag_p99: f64,
    errors: u64,
    /// Calls answered while measuring, and during the warm-up before.
    ok: u64,
    warmup_ok: u64,
    /// The generator's CPU time while measuring, µs (NaN where unknown).
    gen_cpu_us: f64,
    /// Open loop: time the path's process (the proxy, or for a direct path
    /// the upstream) spent runnable but waiting for a CPU, µs per call.
    wait_us: f64,
    /// The machine's CPU time the hypervisor gave to others (steal) while
    /// this ran: what one run, not the path, was short of.
    steal: Steal,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bin = crate::demo::build_binaries(true)?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    match args.suite.as_str() {
        "requests" => requests(&args, &bin, &dir),
        "propagation" => crate::propagation::run(&bin, &dir, &args.propagation),
        "all" => {
            requests(&args, &bin, &dir)?;
            crate::propagation::run(&bin, &dir, &args.propagation)
        }
        other => bail!("--suite {other:?}: requests, propagation or all"),
    }
}

fn requests(args: &Args, bin: &Path, dir: &Path) -> anyhow::Result<()> {
    // Built before anything runs: the builds take both cores for minutes.
    let pgo_bin = if args.pgo {
        Some(crate::pgo::build(bin)?)
    } else {
        None
    };
    let mut procs = Procs(Vec::new());

    let (reference, direct) = crate::demo::start_reference(bin, Stdio::null())?;
    let reference_pid = reference.id();
    procs.0.push(reference);
    let upstream_addr = direct
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();

    let key = gen_key(&bin.join("stoa-gateway"))?;
    let config_text = |listener_extra: &str| gateway_yaml(listener_extra, dir, &direct, &key);
    let key = key.key.clone();
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, config_text(""))?;
    // The same gateway with one worker thread: on a 2-core machine shared
    // with the load generator and the upstream, fewer threads to wake.
    let config_one = dir.join("gateway-1w.yaml");
    std::fs::write(&config_one, config_text("workers: 1, "))?;
    let start_gateway =
        |name: &str, exe: &Path, config: &Path, procs: &mut Procs| -> anyhow::Result<String> {
            let ready = dir.join(format!("{name}.ready.json"));
            let _ = std::fs::remove_file(&ready);
            let mut cmd = Command::new(exe);
            cmd.args(["run", "--config"])
                .arg(config)
                .arg("--ready-file")
                .arg(&ready)
                .env("RUST_LOG", "warn");
            procs.0.push(
                cmd.stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
                    .spawn()?,
            );
            wait_file(&ready)
        };
    let plain_exe = bin.join("stoa-gateway");
    let bound = start_gateway("gateway", &plain_exe, &config, &mut procs)?;
    let gateway_pid = procs.0.last().map_or(0, Child::id);
    let field_of = ready_field;
    let plain = field_of(&bound, "plain")?;
    let tls_port = field_of(&bound, "tls")?
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let ca = PathBuf::from(field_of(&bound, "ca")?);
    let one = start_gateway("gateway-1w", &plain_exe, &config_one, &mut procs)?;
    let gateway_one_pid = procs.0.last().map_or(0, Child::id);
    let plain_one = field_of(&one, "plain")?;
    // The PGO build, with the plain build's config (its own ports).
    let pgo = match &pgo_bin {
        Some(exe) => {
            let config_pgo = dir.join("gateway-pgo.yaml");
            std::fs::write(&config_pgo, config_text(""))?;
            let b = start_gateway("gateway-pgo", exe, &config_pgo, &mut procs)?;
            let pid = procs.0.last().map_or(0, Child::id);
            let tls = field_of(&b, "tls")?;
            let tls_port = tls.rsplit(':').next().unwrap_or_default().to_owned();
            Some((pid, field_of(&b, "plain")?, tls_port))
        }
        None => None,
    };

    let nginx = if args.no_nginx {
        None
    } else {
        Some(start_nginx(dir, &upstream_addr, &mut procs)?)
    };
    // nginx serves with worker processes, children of the one we started.
    let nginx_pids = match nginx {
        Some(_) => with_children(procs.0.last().map_or(0, Child::id), 2),
        None => Vec::new(),
    };

    let mut paths: Vec<(String, String, u8, Option<&str>)> = vec![
        ("direct h1".into(), direct.clone(), 1, None),
        (
            "gateway h1".into(),
            format!("http://{plain}/mcp/reference"),
            1,
            Some(key.as_str()),
        ),
        // `/mcp`, the virtual server of every upstream the key may use: the
        // endpoint agents are given. The other gateway paths relay one.
        (
            "gateway h1 aggregated".into(),
            format!("http://{plain}/mcp"),
            1,
            Some(key.as_str()),
        ),
        (
            "gateway h1 1 worker".into(),
            format!("http://{plain_one}/mcp/reference"),
            1,
            Some(key.as_str()),
        ),
        ("direct h2c".into(), direct.clone(), 2, None),
        (
            "gateway h2c".into(),
            format!("http://{plain}/mcp/reference"),
            2,
            Some(key.as_str()),
        ),
        (
            "gateway h2 (TLS)".into(),
            format!("https://localhost:{tls_port}/mcp/reference"),
            2,
            Some(key.as_str()),
        ),
        (
            "gateway h3".into(),
            format!("https://127.0.0.1:{tls_port}/mcp/reference"),
            3,
            Some(key.as_str()),
        ),
    ];
    if let Some((_, plain_pgo, tls_pgo)) = &pgo {
        let url = format!("http://{plain_pgo}/mcp/reference");
        paths.insert(
            2,
            ("gateway h1 PGO".into(), url.clone(), 1, Some(key.as_str())),
        );
        let after_h2c = 1 + paths
            .iter()
            .position(|p| p.0 == "gateway h2c")
            .unwrap_or(paths.len() - 1);
        paths.insert(
            after_h2c,
            ("gateway h2c PGO".into(), url, 2, Some(key.as_str())),
        );
        paths.push((
            "gateway h3 PGO".into(),
            format!("https://127.0.0.1:{tls_pgo}/mcp/reference"),
            3,
            Some(key.as_str()),
        ));
    }
    if let Some(port) = nginx {
        paths.insert(
            2,
            (
                "nginx h1".into(),
                format!("http://127.0.0.1:{port}/mcp"),
                1,
                None,
            ),
        );
    }

    let secs = format!("{}s", args.seconds);
    let load = |url: &str,
                http: u8,
                key: Option<&str>,
                conc: usize,
                rate: Option<f64>|
     -> anyhow::Result<Run> {
        // Through `/mcp` the upstream's tools are `<upstream>__<name>`.
        let tool = if key.is_some() && url.ends_with("/mcp") {
            "reference__echo"
        } else {
            "echo"
        };
        let mut cmd = Command::new(bin.join("stoa-load"));
        cmd.args([
            "--tool",
            tool,
            "--url",
            url,
            "--http",
            &http.to_string(),
            "--concurrency",
            &conc.to_string(),
            "--duration",
            &secs,
        ])
        .arg("--ca")
        .arg(&ca);
        if let Some(k) = key {
            cmd.args(["--key", k]);
        }
        if let Some(r) = rate {
            cmd.args(["--rate", &format!("{r:.0}")]);
        }
        let stolen = Steal::now();
        let out = cmd.output()?;
        let steal = Steal::now().since(stolen);
        if !out.status.success() {
            bail!(
                "stoa-load {url} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = String::from_utf8(out.stdout)?;
        let num = |k: &str| -> f64 {
            s.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|t| t.split([',', '}']).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        Ok(Run {
            rate: num("rate"),
            p50: num("p50_us"),
            p99: num("p99_us"),
            lag_p99: num("lag_p99_us"),
            errors: num("errors") as u64,
            ok: num("ok") as u64,
            warmup_ok: num("warmup_ok") as u64,
            gen_cpu_us: num("cpu_us"),
            wait_us: f64::NAN,
            steal,
        })
    };
    // Whose CPU a path's saturation costs: the proxy's, or for a direct
    // path the upstream's own.
    let pids_of = |name: &str| -> Vec<u32> {
        if name.starts_with("direct") {
            vec![reference_pid]
        } else if name.starts_with("nginx") {
            nginx_pids.clone()
        } else if name.contains("1 worker") {
            vec![gateway_one_pid]
        } else if name.contains("PGO") {
            pgo.as_ref().map(|p| vec![p.0]).unwrap_or_default()
        } else {
            vec![gateway_pid]
        }
    };

    println!(
        "\nSTOA bench: tools/call echo, {}s per measurement, saturation with {} workers \
         (each figure the median of {} rounds taken in turn across the paths)\n",
        args.seconds, args.concurrency, args.rounds
    );
    // Saturation first, in rounds that visit every path in turn, so a slow
    // spell of the machine touches every path alike; the median is kept.
    let mut rates: Vec<Vec<Run>> = vec![Vec::new(); paths.len()];
    // CPU seconds and calls served, per path, over all its rounds.
    let mut cpu = vec![(0.0, 0.0, 0u64); paths.len()];
    for _ in 0..args.rounds.max(1) {
        for (i, (name, url, http, key)) in paths.iter().enumerate() {
            let pids = pids_of(name);
            let (user, total) = cpu_secs(&pids);
            let run = load(url, *http, *key, args.concurrency, None)?;
            let (user_after, total_after) = cpu_secs(&pids);
            cpu[i].0 += total_after - total;
            cpu[i].1 += user_after - user;
            // The proxy served the warm-up too.
            cpu[i].2 += run.ok + run.warmup_ok;
            rates[i].push(run);
        }
    }
    let sats: Vec<(Run, u64)> = rates
        .into_iter()
        .map(|runs| median_by(runs, |r| r.rate))
        .collect();
    // An open-loop load is one rate for every path of a group (h1; h2c, h2
    // and h3), a share of the group's slowest saturation (the 1-worker
    // variant, the PGO build and the aggregated endpoint aside): a path and
    // its baseline see the same offered load.
    let group_sat = |h1: bool| {
        paths
            .iter()
            .zip(&sats)
            .filter(|((name, _, http, _), _)| {
                (*http == 1) == h1
                    && !name.contains("1 worker")
                    && !name.contains("PGO")
                    && !name.contains("aggregated")
            })
            .map(|(_, (r, _))| r.rate)
            .fold(f64::INFINITY, f64::min)
    };
    let (sat_h1, sat_h2) = (group_sat(true), group_sat(false));
    let loads: Vec<f64> = args.loads.iter().map(|l| l / 100.0).collect();
    for l in &loads {
        println!(
            "load {:.0}%: {:.0} req/s on h1 paths, {:.0} req/s on h2c/h2/h3 paths",
            l * 100.0,
            sat_h1 * l,
            sat_h2 * l
        );
    }
    print!(
        "\n{:<20} {:>9} {:>9} {:>11} {:>7} {:>8} {:>8}",
        "path", "c1 p50µs", "c1 p99µs", "sat req/s", "steal %", "cpu µs", "user µs"
    );
    for l in &loads {
        let l = l * 100.0;
        print!(
            " {:>9} {:>9} {:>8} {:>7} {:>7} {:>7}",
            format!("{l:.0}% p50"),
            format!("{l:.0}% p99"),
            "lag p99",
            "gen µs",
            "wait µs",
            "steal %"
        );
    }
    println!(" {:>7}", "errors");

    // Latency in rounds too, every path in turn; the run with the median
    // p50 (c=1) or p99 (open loop) is kept: one slow spell of the VM moves
    // a single 5 s tail by milliseconds.
    let mut c1_runs: Vec<Vec<Run>> = vec![Vec::new(); paths.len()];
    let mut open_runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); loads.len()]; paths.len()];
    for _ in 0..args.rounds.max(1) {
        for (i, (name, url, http, key)) in paths.iter().enumerate() {
            c1_runs[i].push(load(url, *http, *key, 1, None)?);
            let sat = if *http == 1 { sat_h1 } else { sat_h2 };
            let pids = pids_of(name);
            for (j, l) in loads.iter().enumerate() {
                let waited = runq_wait_secs(&pids);
                let mut run = load(url, *http, *key, args.concurrency, Some(sat * l))?;
                run.wait_us =
                    (runq_wait_secs(&pids) - waited) * 1e6 / (run.ok + run.warmup_ok).max(1) as f64;
                open_runs[i][j].push(run);
            }
        }
    }
    let mut results = Vec::new();
    for ((((name, _, _, _), (sat, errors)), (cpu_s, user_s, served)), (c1s, opens)) in paths
        .iter()
        .zip(sats)
        .zip(cpu)
        .zip(c1_runs.into_iter().zip(open_runs))
    {
        let (c1, c1_errors) = median_by(c1s, |r| r.p50);
        print!(
            "{:<20} {:>9.0} {:>9.0} {:>11.0} {:>7.1} {:>8.1} {:>8.1}",
            name,
            c1.p50,
            c1.p99,
            sat.rate,
            sat.steal.percent(),
            cpu_s * 1e6 / served.max(1) as f64,
            user_s * 1e6 / served.max(1) as f64,
        );
        let mut all_errors = c1_errors + errors;
        let mut open = Vec::new();
        for runs in opens {
            let (r, e) = median_by(runs, |r| r.p99);
            print!(
                " {:>9.0} {:>9.0} {:>8.0} {:>7.1} {:>7.1} {:>7.1}",
                r.p50,
                r.p99,
                r.lag_p99,
                r.gen_cpu_us / r.ok.max(1) as f64,
                r.wait_us,
                r.steal.percent()
            );
            all_errors += e;
            open.push(r);
        }
        println!(" {all_errors:>7}");
        results.push((name.clone(), c1, sat, open));
    }
    let find = |n: &str| results.iter().find(|r| r.0 == n);
    println!("\nAgainst the upstream called directly, same run (added p50 / p99, µs):");
    for (path, base) in [
        ("gateway h1", "direct h1"),
        ("gateway h1 PGO", "direct h1"),
        ("gateway h1 aggregated", "direct h1"),
        ("gateway h1 1 worker", "direct h1"),
        ("nginx h1", "direct h1"),
        ("gateway h2c", "direct h2c"),
        ("gateway h2c PGO", "direct h2c"),
        ("gateway h2 (TLS)", "direct h2c"),
        ("gateway h3", "direct h2c"),
        ("gateway h3 PGO", "direct h2c"),
    ] {
        if let (Some(p), Some(b)) = (find(path), find(base)) {
            print!(
                "  {path:<20} vs {base:<10}: c=1 {:>4.0} / {:>4.0};",
                p.1.p50 - b.1.p50,
                p.1.p99 - b.1.p99,
            );
            for ((l, po), bo) in loads.iter().zip(&p.3).zip(&b.3) {
                print!(
                    " {:.0}% load {:>5.0} / {:>5.0};",
                    l * 100.0,
                    po.p50 - bo.p50,
                    po.p99 - bo.p99
                );
            }
            println!(" throughput {:.2}x", p.2.rate / b.2.rate);
        }
    }
    Ok(())
}

/// The machine's CPU time, all CPUs together, and the part of it the
/// hypervisor ran someone else on (steal), in ticks, from `/proc/stat`.
/// On a shared VM a run with a high steal share shows a slow spell of the
/// host, not of the path: its latency tail is the host's.
#[derive(Debug, Clone, Copy)]
struct Steal {
    stolen: u64,
    total: u64,
}

impl Steal {
    fn now() -> Steal {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu user nice system idle iowait irq softirq steal guest guest_nice
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        Steal {
            stolen: ticks.get(7).copied().unwrap_or(0),
            total: ticks.iter().sum(),
        }
    }

    fn since(self, before: Steal) -> Steal {
        Steal {
            stolen: self.stolen.saturating_sub(before.stolen),
            total: self.total.saturating_sub(before.total),
        }
    }

    /// NaN where `/proc/stat` could not be read.
    fn percent(self) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        self.stolen as f64 * 100.0 / self.total as f64
    }
}

/// The run with the median `key`, and the errors of all runs.
fn median_by(mut runs: Vec<Run>, key: impl Fn(&Run) -> f64) -> (Run, u64) {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let errors = runs.iter().map(|r| r.errors).sum();
    (runs.swap_remove(runs.len() / 2), errors)
}

/// CPU time these processes have used, user and user + system, in seconds,
/// from `/proc/<pid>/stat` (Linux; a process that cannot be read counts 0).
fn cpu_secs(pids: &[u32]) -> (f64, f64) {
    let (mut user, mut system) = (0u64, 0u64);
    for f in pids.iter().filter_map(|p| stat_fields(*p)) {
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        user += tick(11);
        system += tick(12);
    }
    // /proc counts in USER_HZ, 100 on every Linux.
    (user as f64 / 100.0, (user + system) as f64 / 100.0)
}

/// Time the threads of these processes spent runnable but waiting for a
/// CPU, in seconds: the second field of `/proc/<pid>/task/*/schedstat`
/// (Linux; what cannot be read counts 0). Threads that ended are not
/// counted, and the proxies keep theirs.
fn runq_wait_secs(pids: &[u32]) -> f64 {
    let mut ns = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces): the process state is `[0]`, the parent `[1]`, user and system
/// time `[11]` and `[12]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// `pid` and its children, once it has at least `children` of them (or
/// after 5 s, with what there is).
fn with_children(pid: u32, children: usize) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let mut found: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                stat_fields(*p).is_some_and(|f| f.get(1).is_some_and(|pp| *pp == pid.to_string()))
            })
            .collect();
        if found.len() >= children || start.elapsed() > Duration::from_secs(5) {
            found.push(pid);
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key from `stoa-gateway gen-key`: the secret, and what config holds.
pub(crate) struct GenKey {
    pub key: String,
    prefix: String,
    hash: String,
}

pub(crate) fn gen_key(gateway: &Path) -> anyhow::Result<GenKey> {
    let out = Command::new(gateway).arg("gen-key").output()?;
    let text = String::from_utf8(out.stdout)?;
    let field = |n: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(n).map(|v| v.trim().to_owned()))
            .context("gen-key")
    };
    Ok(GenKey {
        key: field("key:")?,
        prefix: field("prefix:")?,
        hash: field("hash:")?,
    })
}

/// A gateway config with both listeners on free ports (the TLS one with a
/// development certificate in `dir/tls`), the upstream at `direct`, and
/// `key` granted it.
pub(crate) fn gateway_yaml(listener_extra: &str, dir: &Path, direct: &str, key: &GenKey) -> String {
    let GenKey { prefix, hash, .. } = key;
    format!(
        "listeners: {{{listener_extra}plain: 127.0.0.1:0, tls: {{addr: 127.0.0.1:0, dev_cert_dir: {:?}}}}}\n\
         tenants: [{{name: bench}}]\nupstreams: [{{name: reference, url: \"{direct}\"}}]\n\
         subscriptions: [{{name: s, tenant: bench, upstream: reference}}]\n\
         api_keys: [{{name: bench, tenant: bench, prefix: {prefix}, hash: \"{hash}\", subscriptions: [s]}}]\n",
        dir.join("tls")
    )
}

/// One string field of a gateway's `--ready-file` JSON.
pub(crate) fn ready_field(bound: &str, k: &str) -> anyhow::Result<String> {
    let tail = bound
        .split(&format!("\"{k}\":\""))
        .nth(1)
        .with_context(|| format!("{k} in {bound}"))?;
    Ok(tail.split('"').next().unwrap_or_default().to_owned())
}

pub(crate) fn wait_file(p: &Path) -> anyhow::Result<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = std::fs::read_to_string(p) {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} never appeared", p.display())
}

/// nginx from Debian, as a keep-alive reverse proxy to the reference
/// upstream. Connections are not closed after 1000 requests (nginx's
/// default on both sides), as the gateway's are not.
fn start_nginx(dir: &Path, upstream: &str, procs: &mut Procs) -> anyhow::Result<u16> {
    if Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "nginx-light"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .or_else(|_| {
            sh(Command::new("apt-get")
                .args(["install", "-y", "-qq", "nginx"])
                .env("DEBIAN_FRONTEND", "noninteractive"))
        })
        .context("installing nginx (or pass --no-nginx)")?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\npid {pid};\nerror_log {err} warn;\ndaemon off;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
               upstream ref {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://ref;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("nginx.err").display(),
            tmp = dir.display(),
        ),
    )?;
    procs.0.push(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stderr(Stdio::null())
            .spawn()?,
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "nginx did not start; see {}",
                dir.join("nginx.err").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(port)
}
