//! `stoactl`: the admin API from a shell. Every command is one admin RPC;
//! `-o json` prints the response message as proto3 JSON.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use stoa_proto::pb::{self, Kind, admin_client::AdminClient, resource::Resource as R};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// Drive a STOA control plane through its admin API.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The admin endpoint (`stoa-control --admin-listen`).
    #[arg(
        long,
        global = true,
        env = "STOA_ADMIN_GRPC_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// An admin token.
    #[arg(long, global = true, env = "STOA_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `table` or `json`.
    #[arg(short = 'o', long, global = true, default_value = "table")]
    output: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The control plane's store, revision and replica.
    Status,
    /// List resources of a kind, or show one.
    Get {
        /// tenant, upstream, tool, plan, subscription, key, policy
        kind: String,
        name: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Tools only: of this upstream.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Create a resource.
    #[command(subcommand)]
    Create(Create),
    /// Create or replace resources from a JSON file (`-` for stdin): one
    /// `stoa.v1.Resource` or an array of them, in the proto3 JSON mapping,
    /// e.g. `{"tenant": {"name": "acme"}}`.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
    /// Delete a resource (refused while others use it).
    Delete { kind: String, name: String },
    /// Revoke an API key (by its prefix, or the whole key).
    Revoke { key: String },
    /// List an upstream's tools now and refresh its catalog.
    Discover { upstream: String },
    /// Make a new session-sealing key current.
    RotateSessionKeys {
        #[arg(long, default_value_t = 1)]
        keep_previous: u32,
    },
    /// Gateways, their revision and last ACK/NACK.
    Gateways,
    /// The audit log.
    Audit {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum Create {
    Tenant {
        name: String,
        #[arg(long, default_value = "")]
        display_name: String,
    },
    Upstream(UpstreamArgs),
    Plan {
        name: String,
        #[arg(long, default_value = "")]
        tenant: String,
        /// Requests per minute (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rpm: u64,
        /// Requests per day (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rpd: u64,
    },
    Subscription {
        name: String,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        upstream: String,
        /// Tool names, comma-separated; `*` for all.
        #[arg(long, default_value = "*", value_delimiter = ',')]
        tools: Vec<String>,
        #[arg(long, default_value = "")]
        plan: String,
    },
    Policy {
        name: String,
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        upstream: String,
        /// Tool names or `prefix*`, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        deny: Vec<String>,
    },
    /// An API key; the key is printed once.
    Key {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Subscriptions the key uses (repeat or comma-separate).
        #[arg(long = "subscription", value_delimiter = ',')]
        subscriptions: Vec<String>,
    },
}

#[derive(Args)]
struct UpstreamArgs {
    name: String,
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "")]
    tenant: String,
    /// `Name=Value`, injected on every request to the upstream (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value = "")]
    description: String,
}

fn kind(s: &str) -> Result<Kind, String> {
    Kind::from_label(s).ok_or_else(|| {
        format!("unknown kind {s:?}: tenant, upstream, tool, plan, subscription, key, policy")
    })
}

struct Ctl {
    client: AdminClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    json: bool,
}

impl Ctl {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    fn show<T: serde::Serialize>(&self, msg: &T, table: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(msg).unwrap_or_default());
        } else {
            print!("{}", table());
        }
    }
}

fn row(r: &pb::Resource) -> String {
    let detail = match &r.resource {
        Some(R::Tenant(t)) => t.display_name.clone(),
        Some(R::Upstream(u)) => {
            let mut h: Vec<&str> = u.headers.keys().map(String::as_str).collect();
            h.sort();
            format!("{} tenant={:?} headers={:?}", u.url, u.tenant, h)
        }
        Some(R::Tool(t)) => t.description.chars().take(60).collect(),
        Some(R::Plan(p)) => format!(
            "tenant={:?} rpm={} rpd={}",
            p.tenant, p.requests_per_minute, p.requests_per_day
        ),
        Some(R::Subscription(s)) => format!(
            "tenant={} upstream={} tools={} plan={:?}",
            s.tenant,
            s.upstream,
            s.tools.join(","),
            s.plan
        ),
        Some(R::ApiKey(k)) => format!(
            "tenant={} name={:?} subscriptions={}",
            k.tenant,
            k.display_name,
            k.subscriptions.join(",")
        ),
        Some(R::Policy(p)) => format!(
            "tenant={} upstream={:?} deny={}",
            p.tenant,
            p.upstream,
            p.deny_tools.join(",")
        ),
        Some(R::SessionKeys(k)) => format!("previous={}", k.previous.len()),
        None => String::new(),
    };
    format!("{:<13} {:<24} {}\n", r.kind().label(), r.name(), detail)
}

async fn run(cli: Cli) -> Result<(), String> {
    let channel = Channel::from_shared(cli.server.clone())
        .map_err(|e| format!("--server: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", cli.server))?;
    let token = cli
        .token
        .as_ref()
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .transpose()
        .map_err(|_| "--token: not a valid header value".to_owned())?;
    let mut ctl = Ctl {
        client: AdminClient::new(channel),
        token,
        json: cli.output == "json",
    };
    let fail = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match cli.cmd {
        Cmd::Status => {
            let r = ctl
                .client
                .get_status(ctl.req(pb::GetStatusRequest {}))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || {
                format!(
                    "store {}  revision {}  replica {}  version {}\n",
                    r.store_id, r.revision, r.control_plane, r.version
                )
            });
        }
        Cmd::Get {
            kind: k,
            name: Some(name),
            ..
        } => {
            let rf = pb::ResourceRef::new(kind(&k)?, name);
            let r = ctl
                .client
                .get_resource(ctl.req(pb::GetResourceRequest { resource: Some(rf) }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || r.resource.as_ref().map(row).unwrap_or_default());
        }
        Cmd::Get {
            kind: k,
            name: None,
            tenant,
            upstream,
        } => {
            let q = pb::ListResourcesRequest {
                kind: kind(&k)? as i32,
                tenant: tenant.unwrap_or_default(),
                upstream: upstream.unwrap_or_default(),
            };
            let r = ctl
                .client
                .list_resources(ctl.req(q))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || r.resources.iter().map(row).collect());
        }
        Cmd::Create(Create::Key {
            tenant,
            name,
            subscriptions,
        }) => {
            let q = pb::CreateApiKeyRequest {
                tenant,
                display_name: name,
                subscriptions,
            };
            let r = ctl
                .client
                .create_api_key(ctl.req(q))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || format!("{}\n", r.key));
        }
        Cmd::Create(c) => {
            let resource: pb::Resource = match c {
                Create::Tenant { name, display_name } => {
                    R::Tenant(pb::Tenant { name, display_name })
                }
                Create::Upstream(u) => {
                    let mut headers = std::collections::HashMap::new();
                    for h in u.headers {
                        let (k, v) = h
                            .split_once('=')
                            .ok_or_else(|| format!("--header {h:?}: write Name=Value"))?;
                        headers.insert(k.to_owned(), v.to_owned());
                    }
                    R::Upstream(pb::Upstream {
                        name: u.name,
                        tenant: u.tenant,
                        url: u.url,
                        headers,
                        description: u.description,
                    })
                }
                Create::Plan {
                    name,
                    tenant,
                    rpm,
                    rpd,
                } => R::Plan(pb::Plan {
                    name,
                    tenant,
                    requests_per_minute: rpm,
                    requests_per_day: rpd,
                }),
                Create::Subscription {
                    name,
                    tenant,
                    upstream,
                    tools,
                    plan,
                } => R::Subscription(pb::Subscription {
                    name,
                    tenant,
                    upstream,
                    tools,
                    plan,
                }),
                Create::Policy {
                    name,
                    tenant,
                    upstream,
                    deny,
                } => R::Policy(pb::Policy {
                    name,
                    tenant,
                    upstream,
                    deny_tools: deny,
                }),
                Create::Key { .. } => unreachable!("handled above"),
            }
            .into();
            let r = ctl
                .client
                .create_resource(ctl.req(pb::CreateResourceRequest {
                    resource: Some(resource),
                }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || {
                format!(
                    "created at revision {}\n{}",
                    r.revision,
                    r.resource.as_ref().map(row).unwrap_or_default()
                )
            });
        }
        Cmd::Apply { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| e.to_string())?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
            let items = match value {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            };
            for (i, item) in items.into_iter().enumerate() {
                let resource: pb::Resource = serde_json::from_value(item)
                    .map_err(|e| format!("{file}: resource {i}: {e}"))?;
                let shown = resource.reference().to_string();
                let created = ctl
                    .client
                    .create_resource(ctl.req(pb::CreateResourceRequest {
                        resource: Some(resource.clone()),
                    }))
                    .await;
                let (verb, r) = match created {
                    Ok(r) => ("created", r.into_inner()),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => (
                        "updated",
                        ctl.client
                            .update_resource(ctl.req(pb::UpdateResourceRequest {
                                resource: Some(resource),
                            }))
                            .await
                            .map_err(|s| format!("{shown}: {}", fail(s)))?
                            .into_inner(),
                    ),
                    Err(s) => return Err(format!("{shown}: {}", fail(s))),
                };
                ctl.show(&r, || {
                    format!("{shown} {verb} at revision {}\n", r.revision)
                });
            }
        }
        Cmd::Delete { kind: k, name } => {
            let rf = pb::ResourceRef::new(kind(&k)?, name);
            let r = ctl
                .client
                .delete_resource(ctl.req(pb::DeleteResourceRequest { resource: Some(rf) }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || format!("deleted at revision {}\n", r.revision));
        }
        Cmd::Revoke { key } => {
            // Accept the whole key as well as its prefix.
            let prefix = key
                .strip_prefix("stoa_")
                .and_then(|k| k.split('_').next())
                .unwrap_or(&key)
                .to_owned();
            let r = ctl
                .client
                .revoke_api_key(ctl.req(pb::RevokeApiKeyRequest { prefix }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || format!("revoked at revision {}\n", r.revision));
        }
        Cmd::Discover { upstream } => {
            let r = ctl
                .client
                .discover_tools(ctl.req(pb::DiscoverToolsRequest { upstream }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || {
                r.tools
                    .iter()
                    .map(|t| {
                        format!(
                            "{:<32} {}\n",
                            t.name,
                            t.description.chars().take(60).collect::<String>()
                        )
                    })
                    .collect()
            });
        }
        Cmd::RotateSessionKeys { keep_previous } => {
            let r = ctl
                .client
                .rotate_session_keys(ctl.req(pb::RotateSessionKeysRequest { keep_previous }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || format!("rotated at revision {}\n", r.revision));
        }
        Cmd::Gateways => {
            let r = ctl
                .client
                .list_gateways(ctl.req(pb::ListGatewaysRequest {}))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || {
                let mut s = format!(
                    "{:<24} {:<10} {:>9} {:<22} {}\n",
                    "GATEWAY", "STATE", "REVISION", "CONTROL PLANE", "LAST NACK"
                );
                for g in &r.gateways {
                    let nack = if g.last_nack.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "{}: {}",
                            g.last_nack_revision,
                            g.last_nack
                                .iter()
                                .map(|x| x.reason.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )
                    };
                    s += &format!(
                        "{:<24} {:<10} {:>9} {:<22} {}\n",
                        g.gateway_id,
                        if g.connected { "connected" } else { "gone" },
                        g.revision,
                        g.control_plane,
                        nack
                    );
                }
                s
            });
        }
        Cmd::Audit { after, limit } => {
            let r = ctl
                .client
                .list_audit(ctl.req(pb::ListAuditRequest {
                    after_id: after,
                    limit,
                }))
                .await
                .map_err(fail)?
                .into_inner();
            ctl.show(&r, || {
                r.entries
                    .iter()
                    .map(|e| {
                        let what = e
                            .resource
                            .as_ref()
                            .map(|r| r.to_string())
                            .unwrap_or_default();
                        format!(
                            "{:>6} rev {:>6} {:<16} {:<9} {}\n",
                            e.id, e.revision, e.actor, e.action, what
                        )
                    })
                    .collect()
            });
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stoactl: {e}");
            ExitCode::FAILURE
        }
    }
}
