//! The hyper service: one `/mcp` endpoint, Host/Origin checks, bounded bodies,
//! and dispatch between the stateful 2025 wire (`legacy`) and the stateless
//! 2026-07-28 wire (`stateless`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::value::RawValue;

use super::rpc::{self, INVALID_REQUEST, Message, PARSE_ERROR, RpcError};
use super::sse::SseBody;
use super::{BODY_LIMIT, State, legacy, stateless};

/// Every response body: a buffered JSON/empty body, or an SSE stream.
pub(crate) type Body = Either<Full<Bytes>, SseBody>;

pub(crate) const SESSION_ID: &str = "mcp-session-id";
pub(crate) const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const LAST_EVENT_ID: &str = "last-event-id";

pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != "/mcp" {
        return Ok(empty(StatusCode::NOT_FOUND));
    }
    if !host_allowed(&req) {
        // DNS-rebinding protection: a browser page on a foreign origin must not reach us.
        let err = RpcError::new(
            INVALID_REQUEST,
            "Forbidden: Host or Origin is not a loopback address",
        );
        return Ok(error(StatusCode::FORBIDDEN, None, &err));
    }
    if state.opts.stateless_only && req.method() != Method::POST {
        let mut resp = empty(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    let resp = match *req.method() {
        Method::POST => post(&state, req).await,
        Method::GET => get(&state, req.headers()),
        Method::DELETE => delete(&state, req.headers()),
        _ => {
            let mut resp = empty(StatusCode::METHOD_NOT_ALLOWED);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            resp
        }
    };
    Ok(resp)
}

async fn post(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return too_large();
    }
    let bytes = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(),
        Err(_) => return empty(StatusCode::BAD_REQUEST),
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let err = RpcError::new(INVALID_REQUEST, "JSON-RPC batches are not supported");
        return error(StatusCode::BAD_REQUEST, None, &err);
    }
    let msg: Message = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                None,
                &RpcError::new(PARSE_ERROR, format!("Parse error: {e}")),
            );
        }
    };
    if state.opts.stateless_only || is_modern(&parts.headers, &msg) {
        stateless::handle(state, &parts.headers, msg)
    } else {
        legacy::handle(state, &parts.headers, msg)
    }
}

/// Dual-era dispatch. A session id or a 2025 version header (without a modern
/// `_meta` version) means the stateful wire; anything else is the 2026 wire.
fn is_modern(headers: &HeaderMap, msg: &Message) -> bool {
    let header = headers
        .get(PROTOCOL_VERSION)
        .map(|v| v.to_str().map_or("\u{fffd}", str::trim));
    let legacy_header = header.is_none_or(legacy::is_legacy_version);
    if headers.contains_key(SESSION_ID) && legacy_header {
        return false;
    }
    let meta_version = msg
        .meta()
        .is_some_and(|m| m.contains_key(stateless::META_VERSION));
    match header {
        Some(v) if legacy::is_legacy_version(v) => meta_version,
        Some(_) => true,
        None => meta_version || msg.method.as_deref() == Some("server/discover"),
    }
}

/// `GET`: the session's standalone notification stream, or the resumption of a
/// POST stream when `Last-Event-ID` names one. Without a session there is no
/// stream to offer (2026 wire), hence 405.
fn get(state: &State, headers: &HeaderMap) -> Response<Body> {
    let Some(sid) = headers.get(SESSION_ID).and_then(|v| v.to_str().ok()) else {
        return empty(StatusCode::METHOD_NOT_ALLOWED);
    };
    let Some(session) = state.sessions.get(sid) else {
        return session_not_found();
    };
    if let Some(body) = headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|id| session.resume(id))
    {
        return sse(body);
    }
    sse(session.open_standalone())
}

fn delete(state: &State, headers: &HeaderMap) -> Response<Body> {
    let Some(sid) = headers.get(SESSION_ID).and_then(|v| v.to_str().ok()) else {
        let modern = headers.get(PROTOCOL_VERSION).is_some_and(|v| {
            v.to_str()
                .is_ok_and(|v| !legacy::is_legacy_version(v.trim()))
        });
        return if modern {
            empty(StatusCode::METHOD_NOT_ALLOWED)
        } else {
            missing_session()
        };
    };
    match state.sessions.remove(sid) {
        Some(_) => empty(StatusCode::OK),
        None => session_not_found(),
    }
}

fn host_allowed<B>(req: &Request<B>) -> bool {
    let host = req
        .headers()
        .get(HOST)
        .map(|v| v.to_str().unwrap_or(""))
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if host.is_some_and(|h| !loopback_authority(h)) {
        return false;
    }
    match req.headers().get(ORIGIN) {
        None => true,
        Some(origin) => origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, rest)| loopback_authority(rest.split('/').next().unwrap_or(""))),
    }
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn loopback_authority(authority: &str) -> bool {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, port)) => host == "::1" && (port.is_empty() || port.starts_with(':')),
            None => false,
        };
    }
    let host = authority.split_once(':').map_or(authority, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1"
}

// --- response helpers ---

pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    resp
}

pub(crate) fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn error(status: StatusCode, id: Option<&RawValue>, err: &RpcError) -> Response<Body> {
    json(status, rpc::encode_error(id, err))
}

pub(crate) fn sse(body: SseBody) -> Response<Body> {
    let mut resp = Response::new(Either::Right(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering proxies (nginx and friends) to pass events through at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

pub(crate) fn missing_session() -> Response<Body> {
    let err = RpcError::new(
        INVALID_REQUEST,
        "Bad Request: Mcp-Session-Id header is required",
    );
    error(StatusCode::BAD_REQUEST, None, &err)
}

pub(crate) fn session_not_found() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        None,
        &RpcError::new(INVALID_REQUEST, "Session not found"),
    )
}

fn too_large() -> Response<Body> {
    let err = RpcError::new(INVALID_REQUEST, "Request body too large");
    error(StatusCode::PAYLOAD_TOO_LARGE, None, &err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities() {
        for ok in [
            "localhost",
            "LOCALHOST:3000",
            "127.0.0.1",
            "127.0.0.1:9100",
            "[::1]",
            "[::1]:80",
        ] {
            assert!(loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:80",
            "127.0.0.2",
            "[::2]:80",
            "[::1]x",
            "localhost.evil.com",
            "",
        ] {
            assert!(!loopback_authority(bad), "{bad}");
        }
    }
}
