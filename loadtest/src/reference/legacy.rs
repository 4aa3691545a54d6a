//! The stateful wire (2024-11-05 … 2025-11-25): `initialize` mints a session,
//! every later request names it, JSON-RPC errors travel with HTTP 200, and
//! server→client requests go out on the POST's SSE stream.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::http::{self as web, Body, PROTOCOL_VERSION, SESSION_ID};
use super::mrtr::{InputCtx, Step, StepFn};
use super::rpc::{self, INVALID_REQUEST, Kind, Message, RpcError};
use super::session::{Session, level_index};
use super::streaming::{self, Emitter};
use super::tools::{self, Handler};
use super::{SERVER_NAME, SERVER_VERSION, State, prompts, resources};

/// Stateful-wire versions, newest first.
pub(crate) const VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// How long a tool waits for the client to answer a sampling/elicitation request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Input rounds a tool may ask for before giving up.
const MAX_ROUNDS: usize = 8;

pub(crate) fn is_legacy_version(v: &str) -> bool {
    VERSIONS.contains(&v)
}

pub(crate) fn handle(
    state: &Arc<State>,
    headers: &HeaderMap,
    msg: Message,
) -> http::Response<Body> {
    if let Some(v) = headers.get(PROTOCOL_VERSION)
        && !v.to_str().is_ok_and(|v| is_legacy_version(v.trim()))
    {
        let err = RpcError::new(
            INVALID_REQUEST,
            "Bad Request: unsupported MCP-Protocol-Version",
        );
        return web::error(StatusCode::BAD_REQUEST, None, &err);
    }
    let kind = msg.kind();
    let Message {
        id,
        method,
        params,
        result,
        error,
    } = msg;
    if let (Kind::Request, Some(id), Some("initialize")) = (&kind, &id, method.as_deref()) {
        return initialize(state, id, params.as_ref());
    }
    let Some(sid) = headers.get(SESSION_ID).and_then(|v| v.to_str().ok()) else {
        return web::missing_session();
    };
    let Some(session) = state.sessions.get(sid) else {
        return web::session_not_found();
    };
    match (kind, id, method) {
        (Kind::Request, Some(id), Some(method)) => {
            request(state, &session, id, &method, params.unwrap_or_default())
        }
        (Kind::Response, Some(id), _) => {
            // The answer to one of our sampling/elicitation requests.
            let reply = match error {
                Some(e) => Err(e),
                None => Ok(result.unwrap_or_default()),
            };
            session.answer(&id, reply);
            web::empty(StatusCode::ACCEPTED)
        }
        (Kind::Notification, ..) => web::empty(StatusCode::ACCEPTED),
        _ => web::error(
            StatusCode::BAD_REQUEST,
            None,
            &RpcError::new(INVALID_REQUEST, "Invalid JSON-RPC message"),
        ),
    }
}

fn initialize(state: &State, id: &RawValue, params: Option<&Value>) -> http::Response<Body> {
    let requested = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str);
    let version = match (&state.opts.force_version, requested) {
        (Some(forced), _) => forced.clone(),
        (None, Some(v)) if is_legacy_version(v) => v.to_owned(),
        _ => VERSIONS[0].to_owned(),
    };
    let caps = params
        .and_then(|p| p.get("capabilities"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let Some(session) = state.sessions.create(version.clone(), caps) else {
        return reply(id, Err(RpcError::internal("cannot mint a session id")));
    };
    let result = json!({
        "protocolVersion": version,
        "capabilities": {
            "tools": { "listChanged": true },
            "resources": { "subscribe": true, "listChanged": true },
            "prompts": { "listChanged": true },
            "logging": {},
            "completions": {}
        },
        "serverInfo": { "name": SERVER_NAME, "version": SERVER_VERSION },
        "instructions": "STOA reference MCP server: conformance fixtures plus fast `echo` and `add` tools."
    });
    let mut resp = web::json(StatusCode::OK, rpc::encode_result(id, &result));
    if let Ok(v) = HeaderValue::from_str(&session.id) {
        resp.headers_mut().insert(SESSION_ID, v);
    }
    resp
}

fn reply(id: &RawValue, result: Result<Value, RpcError>) -> http::Response<Body> {
    match result {
        Ok(v) => web::json(StatusCode::OK, rpc::encode_result(id, &v)),
        Err(e) => web::error(StatusCode::OK, Some(id), &e),
    }
}

fn cached(id: &RawValue, list: &RawValue) -> http::Response<Body> {
    web::json(StatusCode::OK, rpc::encode_result(id, list))
}

fn request(
    state: &Arc<State>,
    session: &Arc<Session>,
    id: Box<RawValue>,
    method: &str,
    mut params: Value,
) -> http::Response<Body> {
    let lists = &state.lists;
    if let Some(e) = super::lists::cursor_error(method, &params) {
        return reply(&id, Err(e));
    }
    let result = match method {
        "tools/list" => return cached(&id, lists.tools.get(false)),
        "tools/call" => return call_tool(state, session, id, params),
        "resources/list" => return cached(&id, lists.resources.get(false)),
        "resources/templates/list" => return cached(&id, lists.templates.get(false)),
        "prompts/list" => return cached(&id, lists.prompts.get(false)),
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
            return run_input(state, session, id, name, prompts::get, args);
        }
        "resources/read" => uri(&params).and_then(resources::read),
        "resources/subscribe" => uri(&params).map(|uri| {
            session.subscribe(uri);
            // Show the subscription working: the watched resource "changes" at once.
            session.notify_standalone("notifications/resources/updated", &json!({ "uri": uri }));
            json!({})
        }),
        "resources/unsubscribe" => uri(&params).map(|uri| {
            session.unsubscribe(uri);
            json!({})
        }),
        "completion/complete" => prompts::completion(&params),
        "logging/setLevel" => match params
            .get("level")
            .and_then(Value::as_str)
            .and_then(level_index)
        {
            Some(level) => {
                session.set_log_level(level);
                Ok(json!({}))
            }
            None => Err(RpcError::invalid_params("logging/setLevel: unknown level")),
        },
        "ping" => Ok(json!({})),
        other => Err(RpcError::method_not_found(other)),
    };
    reply(&id, result)
}

fn uri(params: &Value) -> Result<&str, RpcError> {
    params
        .get("uri")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("'uri' is required"))
}

/// Moves `params[key]` out as an object (absent or `null` → empty).
pub(crate) fn take_object(params: &mut Value, key: &str) -> Map<String, Value> {
    match params.get_mut(key).map(Value::take) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn call_tool(
    state: &Arc<State>,
    session: &Arc<Session>,
    id: Box<RawValue>,
    mut params: Value,
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
        Handler::Content(f) => reply(&id, f(&args)),
        Handler::Input(step) => run_input(state, session, id, tool.name.to_owned(), step, args),
        Handler::Signal(f) => reply(
            &id,
            f(&args).map(|c| super::listen::trigger(state, c, Some(session))),
        ),
        Handler::Stream(kind) => {
            let (sink, body) = session.open_stream(kind.retry_ms());
            let progress_token = params.pointer("/_meta/progressToken").cloned();
            let em = Emitter {
                sink,
                id,
                progress_token,
                min_level: Some(session.log_level()),
                modern: false,
            };
            tokio::spawn(streaming::run(kind, em));
            web::sse(body)
        }
    }
}

/// Runs a step function; if it needs input, answers with an SSE stream on which
/// the input requests go out as real server→client requests.
fn run_input(
    state: &Arc<State>,
    session: &Arc<Session>,
    id: Box<RawValue>,
    name: String,
    step: StepFn,
    args: Map<String, Value>,
) -> http::Response<Body> {
    let cx = InputCtx {
        name: &name,
        args: &args,
        caps: &session.caps,
        responses: None,
        state: None,
        sealer: &state.sealer,
    };
    let (requests, sealed) = match step(&cx) {
        Ok(Step::Complete(v)) => return reply(&id, Ok(v)),
        Err(e) => return reply(&id, Err(e)),
        Ok(Step::Input { requests, state }) => (requests, state),
    };
    let (mut sink, body) = session.open_stream(None);
    let (state, session) = (state.clone(), session.clone());
    tokio::spawn(async move {
        let round = Round {
            state: &state,
            session: &session,
            name: &name,
            step,
            args: &args,
        };
        let bytes = match round.drive(&mut sink, requests, sealed).await {
            Ok(v) => rpc::encode_result(&id, &v),
            Err(e) => rpc::encode_error(Some(&id), &e),
        };
        sink.send(&bytes);
        sink.finish();
    });
    web::sse(body)
}

struct Round<'a> {
    state: &'a State,
    session: &'a Session,
    name: &'a str,
    step: StepFn,
    args: &'a Map<String, Value>,
}

impl Round<'_> {
    async fn drive(
        &self,
        sink: &mut super::sse::Sink,
        mut requests: Map<String, Value>,
        mut sealed: Option<String>,
    ) -> Result<Value, RpcError> {
        for _ in 0..MAX_ROUNDS {
            let mut responses = Map::new();
            for (key, req) in requests {
                let method = req
                    .get("method")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let params = req.get("params").cloned().unwrap_or_else(|| json!({}));
                let rx = self.session.request(sink, method, &params);
                let answer = match tokio::time::timeout(CLIENT_TIMEOUT, rx).await {
                    Ok(Ok(answer)) => answer,
                    _ => {
                        self.session.prune_pending();
                        return Err(RpcError::internal(format!(
                            "the client did not answer {method}"
                        )));
                    }
                };
                let value = answer
                    .map_err(|e| RpcError::internal(format!("the client refused {method}: {e}")))?;
                responses.insert(key, value);
            }
            let cx = InputCtx {
                name: self.name,
                args: self.args,
                caps: &self.session.caps,
                responses: Some(&responses),
                state: sealed.as_deref(),
                sealer: &self.state.sealer,
            };
            match (self.step)(&cx)? {
                Step::Complete(v) => return Ok(v),
                Step::Input {
                    requests: r,
                    state: s,
                } => (requests, sealed) = (r, s),
            }
        }
        Err(RpcError::internal("too many input rounds"))
    }
}
