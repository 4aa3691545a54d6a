//! Every way a request can fail, and the one place that turns a failure into
//! an HTTP status plus a JSON-RPC error body.

use http::StatusCode;
use serde_json::{Value, json};

/// Who is at fault: decides the status class and whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream MCP server misbehaved or is unreachable.
    Upstream,
    /// A bug or resource exhaustion on our side.
    Internal,
}

/// JSON-RPC error codes used by MCP (spec "Error handling").
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server errors live in -32000..-32099.
    pub const UNAUTHORIZED: i64 = -32001;
    pub const FORBIDDEN: i64 = -32003;
    pub const SESSION_NOT_FOUND: i64 = -32004;
    pub const UPSTREAM_UNAVAILABLE: i64 = -32010;
    pub const UPSTREAM_TIMEOUT: i64 = -32011;
    pub const UPSTREAM_BAD_RESPONSE: i64 = -32012;
    pub const TOO_LARGE: i64 = -32013;
    pub const TIMEOUT: i64 = -32014;
    /// 2026-07-28: a mirrored header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// 2026-07-28: the protocol version is not supported.
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("missing API key: send `Authorization: Bearer stoa_…` or `X-API-Key`")]
    MissingKey,
    #[error("unknown or invalid API key")]
    BadKey,
    #[error("the API key was revoked or replaced while this stream was open")]
    KeyRevoked,
    #[error("origin {0:?} is not allowed")]
    ForbiddenOrigin(String),
    #[error("{0}")]
    NotGranted(String),
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("timed out reading the request body")]
    BodyTimeout,
    #[error("request head exceeds the gateway's limits (max_header_bytes, or 100 header fields)")]
    HeadTooLarge,
    #[error("malformed HTTP/1.1 request: {0}")]
    BadHttp(String),
    #[error("{0}")]
    UnsupportedCoding(String),
    #[error("unsupported content type {0:?}: send application/json")]
    ContentType(String),
    #[error("the Accept header must list both application/json and text/event-stream")]
    NotAcceptable,
    #[error("malformed JSON: {0}")]
    Parse(String),
    #[error("not a JSON-RPC 2.0 message: {0}")]
    InvalidRequest(String),
    #[error("JSON-RPC batches are not supported by MCP {0}")]
    Batch(String),
    #[error("unsupported MCP-Protocol-Version {0:?}")]
    ProtocolVersion(String),
    #[error("header {header} ({found:?}) does not match the body ({expected:?})")]
    HeaderMismatch {
        header: &'static str,
        found: String,
        expected: String,
    },
    #[error("missing Mcp-Session-Id header")]
    MissingSession,
    #[error("session not found or expired")]
    UnknownSession,
    #[error("method {0:?} not found")]
    MethodNotFound(String),
    /// The stateless revision answers unknown and removed methods with 404.
    #[error("method {0:?} not found")]
    NoMethodStateless(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("no upstream named {0:?}")]
    NoSuchUpstream(String),
    #[error("method {0} not allowed on this endpoint")]
    MethodNotAllowed(http::Method),
    /// GET or DELETE without a session under 2026-07-28, which has neither
    /// sessions nor a GET stream.
    #[error(
        "method {0} not allowed: protocol version 2026-07-28 has no sessions and no GET stream, only POST"
    )]
    StatelessMethod(http::Method),
    #[error("upstream {upstream} is unreachable: {reason}")]
    UpstreamUnavailable { upstream: String, reason: String },
    #[error("upstream {upstream} did not answer within {after_ms} ms")]
    UpstreamTimeout { upstream: String, after_ms: u64 },
    #[error("upstream {upstream} sent an invalid response: {reason}")]
    UpstreamBadResponse { upstream: String, reason: String },
    /// The upstream answered a request the gateway made for `/mcp` (a list
    /// it merges) with a JSON-RPC error: relayed with the upstream's code.
    #[error("upstream {} refused {}: {}", .0.upstream, .0.method, .0.message)]
    UpstreamRefused(Box<Refusal>),
    #[error("gateway is shutting down")]
    ShuttingDown,
    #[error("the gateway has no configuration yet (waiting for its control plane)")]
    NotConfigured,
    #[error("internal error: {0}")]
    Internal(String),
}

/// An upstream's JSON-RPC error to a request the gateway made (boxed: it
/// would double the size of every `GatewayError`).
#[derive(Debug)]
pub struct Refusal {
    pub upstream: String,
    pub method: String,
    pub code: i64,
    pub message: String,
    /// The upstream's `data`, relayed as `data.upstreamData`.
    pub data: Option<Value>,
}

impl GatewayError {
    /// An upstream's JSON-RPC error to a request the gateway made for the
    /// client. Its code is relayed when it describes the request (invalid
    /// request or params, an internal error) or is the upstream's own
    /// (outside the range JSON-RPC reserves); the reserved ones speak of
    /// the hop between gateway and upstream (a session, a version, a
    /// header, a key), where the client can do nothing: a bad response.
    pub fn refused_by(upstream: &str, method: &str, err: &Value) -> GatewayError {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .to_owned();
        match err.get("code").and_then(Value::as_i64) {
            Some(c)
                if matches!(
                    c,
                    code::INVALID_REQUEST | code::INVALID_PARAMS | code::INTERNAL_ERROR
                ) || !(-32768..=-32000).contains(&c) =>
            {
                GatewayError::UpstreamRefused(Box::new(Refusal {
                    upstream: upstream.to_owned(),
                    method: method.to_owned(),
                    code: c,
                    message,
                    data: err.get("data").cloned(),
                }))
            }
            _ => GatewayError::UpstreamBadResponse {
                upstream: upstream.to_owned(),
                reason: format!("{method} refused: {err}"),
            },
        }
    }

    pub fn fault(&self) -> Fault {
        use GatewayError::*;
        match self {
            // The upstream found the client's request wanting (e.g. its
            // params): the client's to fix.
            UpstreamRefused(r)
                if r.code == code::INVALID_REQUEST || r.code == code::INVALID_PARAMS =>
            {
                Fault::Downstream
            }
            UpstreamUnavailable { .. }
            | UpstreamTimeout { .. }
            | UpstreamBadResponse { .. }
            | UpstreamRefused(_) => Fault::Upstream,
            Internal(_) | ShuttingDown | NotConfigured => Fault::Internal,
            _ => Fault::Downstream,
        }
    }

    /// Whether the same request may succeed if sent again unchanged.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnavailable { .. }
                | GatewayError::UpstreamTimeout { .. }
                | GatewayError::ShuttingDown
                | GatewayError::NotConfigured
        )
    }

    /// The status for a request of the given revision: 2026-07-28 gives
    /// JSON-RPC errors a meaningful HTTP status too (404 for an unknown
    /// method, 500 for an internal error, 400 for the rest, as its servers
    /// answer), where earlier revisions answer them 200.
    pub fn status_for(&self, stateless: bool) -> StatusCode {
        use GatewayError::*;
        if !stateless {
            return self.status();
        }
        match self {
            NotGranted(_) => StatusCode::FORBIDDEN,
            MethodNotFound(_) => StatusCode::NOT_FOUND,
            InvalidParams(_) => StatusCode::BAD_REQUEST,
            UpstreamRefused(r) => match r.code {
                code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
                code::INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            },
            _ => self.status(),
        }
    }

    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            MissingKey | BadKey | KeyRevoked => StatusCode::UNAUTHORIZED,
            ForbiddenOrigin(_) => StatusCode::FORBIDDEN,
            // A refused tool is a JSON-RPC level answer: the HTTP exchange worked.
            NotGranted(_) | MethodNotFound(_) | InvalidParams(_) | UpstreamRefused(_) => {
                StatusCode::OK
            }
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BadHttp(_) => StatusCode::BAD_REQUEST,
            UnsupportedCoding(_) => StatusCode::NOT_IMPLEMENTED,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Parse(_)
            | InvalidRequest(_)
            | Batch(_)
            | ProtocolVersion(_)
            | HeaderMismatch { .. } => StatusCode::BAD_REQUEST,
            MissingSession => StatusCode::BAD_REQUEST,
            UnknownSession | NoMethodStateless(_) => StatusCode::NOT_FOUND,
            NoSuchUpstream(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) | StatelessMethod(_) => StatusCode::METHOD_NOT_ALLOWED,
            UpstreamUnavailable { .. } | UpstreamBadResponse { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ShuttingDown | NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn rpc_code(&self) -> i64 {
        use GatewayError::*;
        match self {
            MissingKey | BadKey | KeyRevoked => code::UNAUTHORIZED,
            ForbiddenOrigin(_) | NotGranted(_) => code::FORBIDDEN,
            BodyTooLarge { .. } | HeadTooLarge => code::TOO_LARGE,
            BadHttp(_) | UnsupportedCoding(_) => code::INVALID_REQUEST,
            BodyTimeout => code::TIMEOUT,
            Parse(_) => code::PARSE_ERROR,
            ContentType(_) | NotAcceptable | InvalidRequest(_) | Batch(_) | MissingSession
            | MethodNotAllowed(_) | StatelessMethod(_) => code::INVALID_REQUEST,
            HeaderMismatch { .. } => code::HEADER_MISMATCH,
            ProtocolVersion(_) => code::UNSUPPORTED_VERSION,
            UnknownSession => code::SESSION_NOT_FOUND,
            MethodNotFound(_) | NoMethodStateless(_) | NoSuchUpstream(_) => code::METHOD_NOT_FOUND,
            InvalidParams(_) => code::INVALID_PARAMS,
            UpstreamUnavailable { .. } => code::UPSTREAM_UNAVAILABLE,
            UpstreamTimeout { .. } => code::UPSTREAM_TIMEOUT,
            UpstreamBadResponse { .. } => code::UPSTREAM_BAD_RESPONSE,
            UpstreamRefused(r) => r.code,
            ShuttingDown | NotConfigured | Internal(_) => code::INTERNAL_ERROR,
        }
    }

    /// The JSON-RPC error object, with a machine-readable reason in `data`.
    pub fn rpc_error(&self) -> Value {
        let mut data = json!({ "reason": self.reason(), "retryable": self.retryable() });
        match self {
            GatewayError::ProtocolVersion(requested) => {
                data["requested"] = json!(requested);
                data["supported"] = json!(crate::mcp::VERSIONS);
            }
            GatewayError::UpstreamRefused(r) => {
                data["upstream"] = json!(r.upstream);
                if let Some(d) = &r.data {
                    data["upstreamData"] = d.clone();
                }
            }
            _ => {}
        }
        json!({
            "code": self.rpc_code(),
            "message": self.to_string(),
            "data": data,
        })
    }

    /// A stable, short identifier of the failure for logs, metrics and clients.
    pub fn reason(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingKey => "missing_key",
            BadKey => "bad_key",
            KeyRevoked => "key_revoked",
            ForbiddenOrigin(_) => "forbidden_origin",
            NotGranted(_) => "not_granted",
            BodyTooLarge { .. } => "body_too_large",
            HeadTooLarge => "head_too_large",
            BadHttp(_) => "bad_http",
            UnsupportedCoding(_) => "unsupported_transfer_coding",
            BodyTimeout => "body_timeout",
            ContentType(_) => "content_type",
            NotAcceptable => "not_acceptable",
            Parse(_) => "parse_error",
            InvalidRequest(_) => "invalid_request",
            Batch(_) => "batch_unsupported",
            ProtocolVersion(_) => "protocol_version",
            HeaderMismatch { .. } => "header_mismatch",
            MissingSession => "missing_session",
            UnknownSession => "unknown_session",
            MethodNotFound(_) | NoMethodStateless(_) => "method_not_found",
            InvalidParams(_) => "invalid_params",
            NoSuchUpstream(_) => "no_such_upstream",
            MethodNotAllowed(_) | StatelessMethod(_) => "method_not_allowed",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamBadResponse { .. } => "upstream_bad_response",
            UpstreamRefused(_) => "upstream_refused",
            ShuttingDown => "shutting_down",
            NotConfigured => "not_configured",
            Internal(_) => "internal",
        }
    }

    /// A complete JSON-RPC error response for request `id` (null when unknown).
    pub fn rpc_response(&self, id: Option<&Value>) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": self.rpc_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_their_reason() {
        let e = GatewayError::NotGranted("tool \"x\" is not granted to this key".into());
        let body = e.rpc_response(Some(&json!(7)));
        assert_eq!(body["id"], 7);
        assert_eq!(body["error"]["code"], code::FORBIDDEN);
        assert_eq!(body["error"]["data"]["reason"], "not_granted");
        assert_eq!(e.fault(), Fault::Downstream);
        let up = GatewayError::UpstreamTimeout {
            upstream: "a".into(),
            after_ms: 5,
        };
        assert_eq!(up.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(up.retryable());
        assert_eq!(up.fault(), Fault::Upstream);
        // An upstream's JSON-RPC refusal keeps its code and names it.
        let refused = GatewayError::refused_by(
            "a",
            "tools/list",
            &json!({"code": -32602, "message": "bad cursor", "data": {"cursor": "x"}}),
        );
        let body = refused.rpc_response(None);
        assert_eq!(refused.status(), StatusCode::OK);
        assert_eq!(body["error"]["code"], -32602);
        assert_eq!(body["error"]["data"]["upstream"], "a");
        assert_eq!(body["error"]["data"]["reason"], "upstream_refused");
        assert!(!refused.retryable());
        assert_eq!(body["error"]["data"]["upstreamData"]["cursor"], "x");
        // A reserved code speaks of the gateway's hop, not the client's
        // request: the upstream answered the gateway badly.
        let hop = GatewayError::refused_by(
            "a",
            "tools/list",
            &json!({"code": -32004, "message": "session not found"}),
        );
        assert_eq!(hop.reason(), "upstream_bad_response");
        assert_eq!(hop.status(), StatusCode::BAD_GATEWAY);
    }
}
