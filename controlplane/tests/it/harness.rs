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
