//! `stoa-control seed-keys`: many API keys at once, through the store's own
//! write path (so every key has its change-log and audit rows), in batches
//! of one revision each. For benchmarks and for importing a key population.

use std::io::Write as _;

use stoa_proto::{
    keys::NewKey,
    pb::{self, resource::Resource as R},
};

use crate::{
    auth,
    store::{Actor, Op, Store},
};

#[derive(clap::Args)]
pub struct Args {
    /// How many keys.
    #[arg(long)]
    count: usize,
    #[arg(long, default_value = "bench")]
    tenant: String,
    #[arg(long, default_value = "bench")]
    subscription: String,
    /// The upstream the subscription grants (made if missing).
    #[arg(long, default_value = "ref")]
    upstream: String,
    #[arg(long, default_value = "http://127.0.0.1:9/mcp")]
    upstream_url: String,
    /// Keys per revision.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Where the plain keys go, one per line.
    #[arg(long)]
    out: std::path::PathBuf,
}

pub async fn run(database_url: &str, a: Args) -> anyhow::Result<()> {
    let store = Store::open(database_url).await?;
    let actor = Actor {
        name: "seed-keys".into(),
        source: "cli".into(),
    };
    let parents = vec![
        Op::Put(
            R::Tenant(pb::Tenant {
                name: a.tenant.clone(),
                display_name: String::new(),
            })
            .into(),
        ),
        Op::Put(
            R::Upstream(pb::Upstream {
                name: a.upstream.clone(),
                url: a.upstream_url.clone(),
                ..Default::default()
            })
            .into(),
        ),
        Op::Put(
            R::Subscription(pb::Subscription {
                name: a.subscription.clone(),
                tenant: a.tenant.clone(),
                upstream: a.upstream.clone(),
                tools: vec!["*".into()],
                plan: String::new(),
            })
            .into(),
        ),
    ];
    store.apply(&actor, "seed", parents).await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&a.out)?);
    let started = std::time::Instant::now();
    let mut made = 0;
    while made < a.count {
        let n = a.batch.max(1).min(a.count - made);
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let NewKey { key, prefix } = NewKey::generate();
            writeln!(out, "{key}")?;
            ops.push(Op::Create(
                R::ApiKey(pb::ApiKey {
                    prefix,
                    display_name: String::new(),
                    tenant: a.tenant.clone(),
                    sha256: auth::hash(&key).to_vec(),
                    subscriptions: vec![a.subscription.clone()],
                })
                .into(),
            ));
        }
        let (revision, _) = store.apply(&actor, "seed", ops).await?;
        made += n;
        eprintln!("seed-keys: {made}/{} at revision {revision}", a.count);
    }
    out.flush()?;
    eprintln!("seed-keys: {made} keys in {:.1?}", started.elapsed());
    Ok(())
}
