//! The stateless 2026-07-28 wire: per-request `_meta`, mirrored headers, typed
//! error codes with meaningful HTTP statuses, `server/discover`, and MRTR
//! (`input_required` results) instead of server→client requests.

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::http::{self as web, Body, PROTOCOL_VERSION};
use super::legacy::{self, take_object};
use super::mrtr::{InputCtx, Step, StepFn};
use super::rpc::{self, INVALID_REQUEST, Kind, Message, RpcError, UNSUPPORTED_VERSION};
use super::session::level_index;
use super::sse::Sink;
use super::streaming::{self, Emitter};
use super::tools::{self, Handler};
use super::{SERVER_NAME, SERVER_VERSION, State, listen, mirror, prompts, resources};

pub(crate) const VERSION: &str = "2026-07-28";
pub(crate) const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// How long clients may cache list/read results; the catalogue never changes.
const TTL_MS: u64 = 60_000;

/// Adds what every 2026 result carries: `resultType`, `serverInfo` in `_meta`, and
/// for cacheable (list/read) results `ttlMs` and `cacheScope`.
pub(crate) fn complete(mut result: Value, cacheable: bool) -> Value {
    decorate(&mut result, "complete", cacheable);
    result
}

fn decorate(result: &mut Value, result_type: &str, cacheable: bool) {
    let Value::Object(m) = result else { return };
    m.insert("resultType".into(), result_type.into());
    if cacheable {
        m.insert("ttlMs".into(), TTL_MS.into());
        m.insert("cacheScope".into(), "public".into());
    }
    let meta = m.entry("_meta").or_insert_with(|| json!({}));
    if let Value::Object(meta) = meta {
        meta.insert(
            META_SERVER_INFO.into(),
            json!({ "name": SERVER_NAME, "version": SERVER_VERSION }),
        );
    }
}

/// What a validated request's `_meta` says about the client.
struct Meta {
    caps: Value,
    log_level: Option<u8>,
    progress_token: Option<Value>,
}

pub(crate) fn handle(
    state: &Arc<State>,
    headers: &HeaderMap,
    msg: Message,
) -> http::Response<Body> {
    let kind = msg.kind();
    let Message {
        id, method, params, ..
    } = msg;
    let (id, method) = match (kind, id, method) {
        (Kind::Request, Some(id), Some(method)) => (id, method),
        // Nothing on this wire expects a client notification or response; accept and drop.
        (Kind::Notification | Kind::Response, ..) => return web::empty(StatusCode::ACCEPTED),
        _ => {
            return web::error(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::new(INVALID_REQUEST, "Invalid JSON-RPC message"),
            );
        }
    };
    let params = params.unwrap_or_default();
    let meta = match validate(headers, &method, &params) {
        Ok(meta) => meta,
        Err(e) => return web::error(e.modern_status(), Some(&id), &e),
    };
    route(state, id, &method, params, meta)
}

/// Validation in the order the conformance suite's probes assume.
fn validate(headers: &HeaderMap, method: &str, params: &Value) -> Result<Meta, RpcError> {
    let header = headers
        .get(PROTOCOL_VERSION)
        .ok_or_else(|| RpcError::header_mismatch("missing MCP-Protocol-Version header"))?;
    let header = header.to_str().map(str::trim).unwrap_or("");
    let meta = params
        .get("_meta")
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::invalid_params("params._meta is required"))?;
    let version = meta
        .get(META_VERSION)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            RpcError::invalid_params(format!("_meta[\"{META_VERSION}\"] is required"))
        })?;
    let caps = meta
        .get(META_CAPS)
        .filter(|c| c.is_object())
        .ok_or_else(|| RpcError::invalid_params(format!("_meta[\"{META_CAPS}\"] is required")))?;
    if header != version {
        return Err(RpcError::header_mismatch(
            "MCP-Protocol-Version header does not match _meta protocolVersion",
        ));
    }
    if version != VERSION {
        return Err(RpcError::new(
            UNSUPPORTED_VERSION,
            format!("Unsupported protocol version: {version}"),
        )
        .with_data(json!({ "supported": [VERSION], "requested": version })));
    }
    check_mirrors(headers, method, params).map_err(|e| RpcError::header_mismatch(e.to_string()))?;
    Ok(Meta {
        caps: caps.clone(),
        log_level: meta
            .get(META_LOG_LEVEL)
            .and_then(Value::as_str)
            .and_then(level_index),
        progress_token: meta.get("progressToken").cloned(),
    })
}

fn check_mirrors(
    headers: &HeaderMap,
    method: &str,
    params: &Value,
) -> Result<(), mirror::MirrorError> {
    mirror::expect(headers, "mcp-method", method)?;
    let name_field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return Ok(()),
    };
    // A body without the field is invalid params, reported by the handler.
    let Some(name) = params.get(name_field).and_then(Value::as_str) else {
        return Ok(());
    };
    mirror::expect(headers, "mcp-name", name)?;
    if method == "tools/call"
        && let Some(tool) = tools::find(name)
    {
        let empty = Map::new();
        let args = params
            .get("arguments")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        mirror::expect_params(headers, &tool.schema, args)?;
    }
    Ok(())
}

fn reply(id: &RawValue, result: Result<Value, RpcError>) -> http::Response<Body> {
    match result {
        Ok(v) => web::json(StatusCode::OK, rpc::encode_result(id, &v)),
        Err(e) => web::error(e.modern_status(), Some(id), &e),
    }
}

fn route(
    state: &Arc<State>,
    id: Box<RawValue>,
    method: &str,
    mut params: Value,
    meta: Meta,
) -> http::Response<Body> {
    let lists = &state.lists;
    let cached = |list: &RawValue| web::json(StatusCode::OK, rpc::encode_result(&id, list));
    if let Some(e) = super::lists::cursor_error(method, &params) {
        return reply(&id, Err(e));
    }
    let result = match method {
        "tools/list" => return cached(lists.tools.get(true)),
        "resources/list" => return cached(lists.resources.get(true)),
        "resources/templates/list" => return cached(lists.templates.get(true)),
        "prompts/list" => return cached(lists.prompts.get(true)),
        "tools/call" => return call_tool(state, id, params, meta),
        "prompts/get" => {
            let Some(name) = params
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return reply(
                    &id,
                    Err(RpcError::invalid_params("prompts/get: 'name' is required")),
                );
            };
            let args = take_object(&mut params, "arguments");
            run_step(state, &name, prompts::get, &args, &meta, &params)
        }
        "resources/read" => params
            .get("uri")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("'uri' is required"))
            .and_then(resources::read)
            .map(|v| complete(v, true)),
        "completion/complete" => prompts::completion(&params).map(|v| complete(v, false)),
        "server/discover" => Ok(discover(state)),
        "subscriptions/listen" => return listen::open(state, &id, &params),
        // Removed at this revision (initialize, ping, logging/setLevel, resources/(un)subscribe),
        // and anything unknown.
        other => Err(RpcError::method_not_found(other)),
    };
    reply(&id, result)
}

fn discover(state: &State) -> Value {
    let mut supported = vec![VERSION];
    if !state.opts.stateless_only {
        supported.extend(legacy::VERSIONS);
    }
    complete(
        json!({
            "supportedVersions": supported,
            "capabilities": {
                "tools": { "listChanged": true },
                "prompts": { "listChanged": true },
                "resources": { "subscribe": true },
                "completions": {}
            },
            "instructions": "STOA reference MCP server: conformance fixtures plus fast `echo` and `add` tools."
        }),
        true,
    )
}

fn call_tool(
    state: &Arc<State>,
    id: Box<RawValue>,
    mut params: Value,
    meta: Meta,
) -> http::Response<Body> {
    let Some(tool) = params
        .get("name")
        .and_then(Value::as_str)
        .and_then(tools::find)
    else {
        return reply(&id, Err(RpcError::invalid_params("Unknown tool")));
    };
    let args = take_object(&mut params, "arguments");
    match tool.handler {
        Handler::Content(f) => reply(&id, f(&args).map(|v| complete(v, false))),
        Handler::Input(step) => reply(&id, run_step(state, tool.name, step, &args, &meta, &params)),
        Handler::Signal(f) => reply(
            &id,
            f(&args).map(|c| complete(listen::trigger(state, c, None), false)),
        ),
        Handler::Stream(kind) => {
            let (sink, body) = Sink::direct(state.next_stream());
            let em = Emitter {
                sink,
                id,
                progress_token: meta.progress_token,
                min_level: meta.log_level,
                modern: true,
            };
            tokio::spawn(streaming::run(kind, em));
            web::sse(body)
        }
    }
}

/// One MRTR round: the client's `inputResponses`/`requestState` in, a complete
/// or `input_required` result out.
fn run_step(
    state: &State,
    name: &str,
    step: StepFn,
    args: &Map<String, Value>,
    meta: &Meta,
    params: &Value,
) -> Result<Value, RpcError> {
    let cx = InputCtx {
        name,
        args,
        caps: &meta.caps,
        responses: params.get("inputResponses").and_then(Value::as_object),
        state: params.get("requestState").and_then(Value::as_str),
        sealer: &state.sealer,
    };
    match step(&cx)? {
        Step::Complete(v) => Ok(complete(v, false)),
        Step::Input { requests, state } => {
            let mut result = json!({ "inputRequests": requests });
            if let (Some(s), Value::Object(m)) = (state, &mut result) {
                m.insert("requestState".into(), s.into());
            }
            decorate(&mut result, "input_required", false);
            Ok(result)
        }
    }
}
