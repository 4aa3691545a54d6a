//! `stoa-gateway`: run the gateway, or the small tools operators need
//! around it (make a key, hash a key, print the config schema, check a file).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

// The request path allocates small, short-lived buffers on every request;
// mimalloc's thread-local free lists beat glibc's there (measured with
// `cargo xtask bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use stoa_gateway::{auth, config::FileConfig, model::Snapshot, run};

#[derive(Parser)]
#[command(
    name = "stoa-gateway",
    version,
    about = "STOA gateway: authenticated, metered MCP relay"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Config file (YAML). `stoa-gateway schema` prints its JSON Schema.
    #[arg(
        long,
        env = "STOA_CONFIG",
        default_value = "stoa-gateway.yaml",
        global = true
    )]
    config: PathBuf,
    /// Log format: `text` or `json`.
    #[arg(long, env = "STOA_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (the default).
    Run {
        /// Write the bound addresses (JSON) here once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Print a new API key, its prefix and the hash to put in config.
    GenKey,
    /// Print the `sha256:` hash of a key read from stdin.
    HashKey,
    /// Print the JSON Schema of the config file.
    Schema,
    /// Parse and validate the config file; exit non-zero if anything is rejected.
    Check,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run { ready_file: None }) {
        Cmd::GenKey => {
            let k = stoa_proto::keys::NewKey::generate();
            println!(
                "key:    {}\nprefix: {}\nhash:   {}",
                k.key,
                k.prefix,
                auth::hash_key(&k.key)
            );
            Ok(())
        }
        Cmd::HashKey => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            println!("{}", auth::hash_key(line.trim()));
            Ok(())
        }
        Cmd::Schema => {
            println!("{}", FileConfig::json_schema());
            Ok(())
        }
        Cmd::Check => {
            let cfg = FileConfig::load(&cli.config)?;
            let (snap, rejected) = Snapshot::build(&cfg);
            for r in &rejected {
                eprintln!("{r}");
            }
            println!(
                "{}: {} tenants, {} upstreams, {} keys, {} rejected",
                cli.config.display(),
                snap.tenants.len(),
                snap.upstreams.len(),
                snap.keys.len(),
                rejected.len()
            );
            if rejected.is_empty() {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Cmd::Run { ready_file } => {
            init_tracing(&cli.log_format);
            rustls::crypto::ring::default_provider()
                .install_default()
                .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
            // This thread accepts, reloads and drains; connections are
            // served on worker threads of their own (`listen::Workers`).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run::run(run::Options {
                config: cli.config,
                ready_file,
            }))
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
}
