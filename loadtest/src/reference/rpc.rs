//! JSON-RPC 2.0 framing: the incoming message shape, typed errors and reply encoding.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub(crate) const PARSE_ERROR: i64 = -32700;
pub(crate) const INVALID_REQUEST: i64 = -32600;
pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
pub(crate) const INVALID_PARAMS: i64 = -32602;
pub(crate) const INTERNAL_ERROR: i64 = -32603;
/// 2026-07-28: a mirrored header is missing or disagrees with the body.
pub(crate) const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the request needs a client capability not declared in its `_meta`.
pub(crate) const MISSING_CAPABILITY: i64 = -32021;
/// 2026-07-28: the requested protocol version is not supported.
pub(crate) const UNSUPPORTED_VERSION: i64 = -32022;

/// One JSON-RPC message as it arrives. Fields are optional so that requests,
/// notifications and responses share one parse; `kind` tells them apart.
#[derive(Deserialize)]
pub(crate) struct Message {
    #[serde(default)]
    pub id: Option<Box<RawValue>>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub params: Option<Value>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// What a [`Message`] is.
pub(crate) enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

impl Message {
    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if self.result.is_some() || self.error.is_some() => Kind::Response,
            _ => Kind::Invalid,
        }
    }

    /// `params._meta`, when present.
    pub fn meta(&self) -> Option<&serde_json::Map<String, Value>> {
        self.params.as_ref()?.get("_meta")?.as_object()
    }
}

/// A JSON-RPC error to send back. The code decides the HTTP status on the 2026 wire.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code})")]
pub(crate) struct RpcError {
    pub code: i64,
    pub message: Cow<'static, str>,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<Cow<'static, str>>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl Into<Cow<'static, str>>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }

    pub fn header_mismatch(message: impl Into<Cow<'static, str>>) -> RpcError {
        RpcError::new(HEADER_MISMATCH, message)
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, message)
    }

    /// HTTP status on the 2026-07-28 wire, where the status carries the error class.
    /// (The stateful wire always uses 200: the SDK treats other statuses as transport failures.)
    pub fn modern_status(&self) -> StatusCode {
        match self.code {
            METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
            INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
}

/// Encodes `{"jsonrpc":"2.0","id":…,"result":…}`.
pub(crate) fn encode_result<R: Serialize + ?Sized>(id: &RawValue, result: &R) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a, R: ?Sized> {
        jsonrpc: &'static str,
        id: &'a RawValue,
        result: &'a R,
    }
    serde_json::to_vec(&Reply {
        jsonrpc: "2.0",
        id,
        result,
    })
    .unwrap_or_else(|e| {
        encode_error(
            Some(id),
            &RpcError::internal(format!("cannot encode result: {e}")),
        )
    })
}

/// Encodes an error reply; `id` is `null` when the request's id is unknown.
pub(crate) fn encode_error(id: Option<&RawValue>, err: &RpcError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Reply<'a> {
        jsonrpc: &'static str,
        id: Option<&'a RawValue>,
        error: ErrorBody<'a>,
    }
    let body = ErrorBody {
        code: err.code,
        message: &err.message,
        data: err.data.as_ref(),
    };
    // Serializing plain strings, integers and a `Value` cannot fail.
    serde_json::to_vec(&Reply {
        jsonrpc: "2.0",
        id,
        error: body,
    })
    .unwrap_or_default()
}

/// Encodes a notification.
pub(crate) fn encode_notification(method: &str, params: &Value) -> Vec<u8> {
    #[derive(Serialize)]
    struct Note<'a> {
        jsonrpc: &'static str,
        method: &'a str,
        params: &'a Value,
    }
    serde_json::to_vec(&Note {
        jsonrpc: "2.0",
        method,
        params,
    })
    .unwrap_or_default()
}

/// Encodes a server→client request.
pub(crate) fn encode_request(id: &str, method: &str, params: &Value) -> Vec<u8> {
    #[derive(Serialize)]
    struct Req<'a> {
        jsonrpc: &'static str,
        id: &'a str,
        method: &'a str,
        params: &'a Value,
    }
    serde_json::to_vec(&Req {
        jsonrpc: "2.0",
        id,
        method,
        params,
    })
    .unwrap_or_default()
}
