//! `Mcp-Param-*` headers for a session-based client's calls to an upstream
//! that speaks only 2026-07-28 (`bridge`).
//!
//! That revision mirrors each argument whose input-schema property says
//! `"x-mcp-header": "<Name>"` into a header `Mcp-Param-<Name>`, and the
//! upstream refuses a call without them. The client speaks an older
//! revision and sends none, so the gateway computes them from the tool's
//! schema. It keeps only those annotations (property path → header name),
//! per upstream and per tool, learnt from the upstream's `tools/list`
//! whenever the gateway lists it (a client's list, or a shortened name to
//! resolve), and listed once for a call when it holds no recent list of that
//! upstream (one listing at a time per upstream). A tool the last listing
//! did not name (new since, or past a bound) is listed for again, at most
//! once per `MISS_TTL`; a listing that failed counts as an empty one for as
//! long, so calls do not each wait for a failing upstream. A cache of this
//! replica: bounded, and forgotten after `TTL`.
//!
//! The rules (as 2026-07-28 clients follow them): strings as they are,
//! integers in decimal, booleans `true`/`false`, each through
//! `mcp::mirror_value` (base64 when not safe plain ASCII); an absent or
//! `null` argument sends no header; only properties reachable through
//! `properties`, of a primitive type other than `number`.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use super::{SingleFlight, Target, lock};
use crate::{gateway::Call, mcp, model::Upstream};

/// How long an upstream's listed annotations are used.
const TTL: Duration = Duration::from_secs(300);
/// How long a listing answers for tools it did not name (and a failed
/// listing for every tool) before a call lists again.
const MISS_TTL: Duration = Duration::from_secs(10);
/// Tools with annotations kept per upstream.
const MAX_TOOLS: usize = 1024;
/// Names of tools without annotations kept per upstream (beyond, a call to
/// one lists again, at most once per `MISS_TTL`).
const MAX_PLAIN: usize = 16 * 1024;
/// Mirrored properties kept per tool.
const MAX_PARAMS: usize = 32;
/// How deep nested `properties` are followed.
const MAX_DEPTH: usize = 8;

/// One mirrored property of a tool's input schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Property names from the arguments object down to the value.
    path: Box<[String]>,
    header: HeaderName,
}

/// The mirrored properties of an input schema, in schema order; a header
/// name that is not a valid one, or that an earlier property took, is
/// skipped.
pub fn annotations(schema: &Value) -> Vec<Param> {
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

fn walk(schema: &Value, path: &mut Vec<String>, out: &mut Vec<Param>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, def) in props {
        if out.len() >= MAX_PARAMS {
            return;
        }
        path.push(name.clone());
        if let Some(header) = def
            .get("x-mcp-header")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty() && mirrorable(def))
            .and_then(|h| HeaderName::from_bytes(format!("mcp-param-{h}").as_bytes()).ok())
            .filter(|h| out.iter().all(|p| p.header != *h))
        {
            out.push(Param {
                path: path.clone().into(),
                header,
            });
        }
        if path.len() < MAX_DEPTH {
            walk(def, path, out);
        }
        path.pop();
    }
}

/// Whether a property's declared type may be mirrored: a primitive other
/// than `number` (or nullable one), or no declared type (then the value
/// decides).
fn mirrorable(def: &Value) -> bool {
    let ok = |t: &str| matches!(t, "string" | "integer" | "boolean");
    match def.get("type") {
        None => true,
        Some(Value::String(t)) => ok(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .all(|t| t.as_str().is_some_and(|t| ok(t) || t == "null")),
        Some(_) => false,
    }
}

/// The header form of an argument; `None` sends no header.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The `Mcp-Param-*` headers of a call with these arguments.
pub fn headers(params: &[Param], args: Option<&Value>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let Some(args) = args else { return h };
    for p in params {
        let value = p.path.iter().try_fold(args, |v, k| v.get(k)).and_then(text);
        if let Some(value) = value {
            h.insert(p.header.clone(), mcp::mirror_value(&value));
        }
    }
    h
}

/// What this replica knows of upstreams' mirrored properties.
#[derive(Default)]
pub struct Schemas {
    /// Upstream name → its tools with annotations, as last listed.
    listed: Mutex<HashMap<String, Listed>>,
    /// The listing in flight for a call per upstream, if any.
    fetches: SingleFlight<()>,
}

struct Listed {
    url: http::Uri,
    at: Instant,
    tools: HashMap<String, Arc<[Param]>>,
    /// Listed tools that mirror nothing.
    plain: std::collections::HashSet<String>,
    /// The last listing tried, done or failed.
    tried: Instant,
}

impl Schemas {
    /// Remembers what a full `tools/list` of the upstream says (it replaces
    /// what was known).
    pub fn learn(&self, up: &Upstream, tools: &[Value]) {
        let mut annotated = HashMap::new();
        let mut plain = std::collections::HashSet::new();
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let params = annotations(tool.get("inputSchema").unwrap_or(&Value::Null));
            if params.is_empty() {
                if plain.len() < MAX_PLAIN {
                    plain.insert(name.to_owned());
                }
                continue;
            }
            if annotated.len() >= MAX_TOOLS {
                tracing::warn!(upstream = %up.name, "more than {MAX_TOOLS} tools mirror arguments into headers: the rest go without");
                break;
            }
            annotated.insert(name.to_owned(), params.into());
        }
        let mut listed = lock(&self.listed);
        // Bounded by the configured upstreams; drop what a reload removed.
        listed.retain(|_, l| l.at.elapsed() < TTL);
        listed.insert(
            up.name.as_str().to_owned(),
            Listed {
                url: up.url.clone(),
                at: Instant::now(),
                tools: annotated,
                plain,
                tried: Instant::now(),
            },
        );
    }

    /// A listing failed: what is known stays, and calls do not list again
    /// for `MISS_TTL` (with nothing known, they go without headers).
    fn failed(&self, up: &Upstream) {
        let mut listed = lock(&self.listed);
        match listed.get_mut(up.name.as_str()) {
            Some(l) if l.url == up.url => l.tried = Instant::now(),
            _ => {
                drop(listed);
                self.learn(up, &[]);
            }
        }
    }

    /// A tool's mirrored properties (empty: none), or `None` when this
    /// replica should list the upstream's tools first: it holds no recent
    /// list, or the list does not name the tool and is older than
    /// `MISS_TTL`.
    fn lookup(&self, up: &Upstream, tool: &str) -> Option<Arc<[Param]>> {
        let listed = lock(&self.listed);
        let l = listed
            .get(up.name.as_str())
            .filter(|l| l.url == up.url && l.at.elapsed() < TTL)?;
        if let Some(p) = l.tools.get(tool) {
            return Some(p.clone());
        }
        (l.plain.contains(tool) || l.tried.elapsed() < MISS_TTL).then(|| Arc::from([]))
    }
}

/// The `Mcp-Param-*` headers of a `tools/call` (upstream's own tool name) to
/// this target, listing the upstream's tools first if need be. A listing
/// that fails sends none: the upstream then refuses the call or not on its
/// own.
pub async fn for_call(call: &Call<'_>, t: &Target, msg: &Value) -> HeaderMap {
    let Some(tool) = msg
        .get("params")
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
    else {
        return HeaderMap::new();
    };
    let schemas = &call.gw.bridges.schemas;
    let params = match schemas.lookup(&t.up, tool) {
        Some(p) => p,
        None => {
            fetch(call, t, tool).await;
            match schemas.lookup(&t.up, tool) {
                Some(p) => p,
                None => return HeaderMap::new(),
            }
        }
    };
    headers(&params, msg.get("params").and_then(|p| p.get("arguments")))
}

/// Lists the upstream's tools (`pages` remembers their annotations): one
/// listing per upstream at a time, which the calls that arrive meanwhile
/// wait for.
async fn fetch(call: &Call<'_>, t: &Target, tool: &str) {
    let schemas = &call.gw.bridges.schemas;
    let up = t.up.name.as_str();
    let list = || async {
        // A call that looked before a listing ended may find it here.
        if schemas.lookup(&t.up, tool).is_some() {
            return;
        }
        // Boxed: `pages` sends through `send`, which comes here for calls.
        match Box::pin(super::pages(call, t, "tools/list", None, "tools")).await {
            Ok(tools) => {
                tracing::debug!(upstream = %up, tools = tools.len(), "listed tools for their parameter headers")
            }
            Err(e) => {
                tracing::warn!(upstream = %up, "listing tools for their parameter headers failed: {e}");
                schemas.failed(&t.up);
            }
        }
    };
    schemas.fetches.run(up, list).await;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sent(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_reference_tool() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"}}, "required": ["region"]});
        let params = annotations(&schema);
        let call = |args: Value| sent(&headers(&params, Some(&args)));
        assert_eq!(
            call(json!({"region": "eu-west-1"})),
            pairs(&[("mcp-param-region", "eu-west-1")])
        );
        assert_eq!(
            call(json!({"region": " Zürich"})),
            pairs(&[("mcp-param-region", "=?base64?IFrDvHJpY2g=?=")])
        );
        assert_eq!(call(json!({"region": null})), pairs(&[]), "null: none");
        assert_eq!(call(json!({})), pairs(&[]), "absent: none");
        assert_eq!(sent(&headers(&params, None)), pairs(&[]), "no arguments");
    }

    #[test]
    fn types_nesting_and_what_is_skipped() {
        let schema = json!({"type": "object", "properties": {
            "count": {"type": "integer", "x-mcp-header": "Count"},
            "dry": {"type": "boolean", "x-mcp-header": "Dry-Run"},
            "maybe": {"type": ["string", "null"], "x-mcp-header": "Maybe"},
            "ratio": {"type": "number", "x-mcp-header": "Ratio"},
            "list": {"type": "array", "x-mcp-header": "List"},
            "bad": {"type": "string", "x-mcp-header": "has space"},
            "empty": {"type": "string", "x-mcp-header": ""},
            "zz_again": {"type": "string", "x-mcp-header": "COUNT"},
            "plain": {"type": "string"},
            "target": {"type": "object", "properties": {
                "zone": {"type": "string", "x-mcp-header": "Zone"},
                "deep": {"type": "object", "properties": {
                    "id": {"type": "integer", "x-mcp-header": "Deep-Id"}}}}},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "x": {"type": "string", "x-mcp-header": "Item"}}}}
        }});
        let params = annotations(&schema);
        let mut names: Vec<_> = params.iter().map(|p| p.header.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "mcp-param-count",
                "mcp-param-deep-id",
                "mcp-param-dry-run",
                "mcp-param-maybe",
                "mcp-param-zone",
            ],
            "number, non-primitive, invalid, duplicate and non-`properties` ones are skipped"
        );
        let args = json!({"count": 42, "dry": false, "maybe": null, "ratio": 0.5,
            "list": ["a"], "zz_again": "x", "plain": "p",
            "target": {"zone": "ünï", "deep": {"id": -7}}, "items": [{"x": "i"}]});
        assert_eq!(
            sent(&headers(&params, Some(&args))),
            pairs(&[
                ("mcp-param-count", "42"),
                ("mcp-param-deep-id", "-7"),
                ("mcp-param-dry-run", "false"),
                ("mcp-param-zone", "=?base64?w7xuw68=?="),
            ])
        );
        // A parent that is absent or not an object: its children send none.
        let partial = json!({"count": 1, "dry": true, "maybe": "m", "target": "flat"});
        assert_eq!(
            sent(&headers(&params, Some(&partial))),
            pairs(&[
                ("mcp-param-count", "1"),
                ("mcp-param-dry-run", "true"),
                ("mcp-param-maybe", "m"),
            ])
        );
        // No declared type: the value decides; an object sends nothing.
        let untyped = annotations(&json!({"properties": {"u": {"x-mcp-header": "U"}}}));
        assert_eq!(
            sent(&headers(&untyped, Some(&json!({"u": "v"})))),
            pairs(&[("mcp-param-u", "v")])
        );
        assert!(headers(&untyped, Some(&json!({"u": {"v": 1}}))).is_empty());
    }

    #[test]
    fn annotations_are_bounded() {
        let mut props = serde_json::Map::new();
        for i in 0..(MAX_PARAMS + 5) {
            props.insert(
                format!("p{i:03}"),
                json!({"type": "string", "x-mcp-header": format!("P{i}")}),
            );
        }
        let wide = annotations(&json!({"properties": props}));
        assert_eq!(wide.len(), MAX_PARAMS);
        let mut deep = json!({"type": "string", "x-mcp-header": "Deep"});
        for _ in 0..MAX_DEPTH + 2 {
            deep = json!({"type": "object", "properties": {"n": deep}});
        }
        assert!(annotations(&deep).is_empty(), "deeper than MAX_DEPTH");
    }

    #[test]
    fn learnt_per_upstream_and_forgotten_when_it_moves() {
        let mut up = Upstream {
            name: crate::model::UpstreamName::parse("up").unwrap(),
            url: "http://127.0.0.1:1/mcp".parse().unwrap(),
            tenant: None,
            headers: Vec::new(),
        };
        let s = Schemas::default();
        assert!(s.lookup(&up, "test_header_param").is_none(), "not listed");
        s.learn(
            &up,
            &[
                json!({"name": "echo", "inputSchema": {"type": "object"}}),
                json!({"name": "test_header_param", "inputSchema": {"properties": {
                    "region": {"type": "string", "x-mcp-header": "Region"}}}}),
            ],
        );
        assert_eq!(s.lookup(&up, "test_header_param").map(|p| p.len()), Some(1));
        assert_eq!(s.lookup(&up, "echo").map(|p| p.len()), Some(0));
        assert_eq!(
            s.lookup(&up, "unlisted").map(|p| p.len()),
            Some(0),
            "listed, so known to mirror nothing"
        );
        assert_eq!(lock(&s.listed)["up"].tools.len(), 1, "only annotated kept");
        // Not named by the listing: answered from it for `MISS_TTL` after
        // the last listing tried, then listed for again.
        lock(&s.listed).get_mut("up").unwrap().tried -= MISS_TTL;
        assert!(
            s.lookup(&up, "unlisted").is_none(),
            "a new tool lists again"
        );
        assert_eq!(s.lookup(&up, "echo").map(|p| p.len()), Some(0), "named");
        s.failed(&up);
        assert_eq!(
            s.lookup(&up, "unlisted").map(|p| p.len()),
            Some(0),
            "a failed listing holds off the next one"
        );
        assert_eq!(
            s.lookup(&up, "test_header_param").map(|p| p.len()),
            Some(1),
            "and keeps what was known"
        );
        up.url = "http://127.0.0.1:2/mcp".parse().unwrap();
        assert!(s.lookup(&up, "echo").is_none(), "another upstream now");
    }
}
