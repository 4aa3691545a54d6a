//! The admin API over HTTP/JSON, for the UI and `curl`: `POST
//! /v1/admin/<Method>` with the gRPC request message as JSON (the proto3
//! JSON mapping) calls the very same `AdminService` method and answers with
//! the response message as JSON. Errors are `{"code", "message"}` with the
//! HTTP status that matches the gRPC code.

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Serialize, de::DeserializeOwned};
use stoa_proto::pb::admin_server::Admin;
use tonic::{Code, Status, metadata::MetadataMap, transport::server::TcpConnectInfo};

use crate::admin::AdminService;

pub fn router(svc: Arc<AdminService>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/admin/{method}", post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(svc)
}

async fn handle(
    State(svc): State<Arc<AdminService>>,
    Path(method): Path<String>,
    conn: Option<axum::Extension<TcpConnectInfo>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = Call {
        headers,
        conn: conn.map(|c| c.0),
        body,
    };
    macro_rules! dispatch {
        ($($name:literal => $m:ident),* $(,)?) => {
            match method.as_str() {
                $($name => c.run(svc, |s, r| async move { s.$m(r).await }).await,)*
                other => error(Status::unimplemented(format!(
                    "no admin method {other:?}; see proto/stoa/v1/admin.proto"
                ))),
            }
        };
    }
    dispatch! {
        "CreateResource" => create_resource,
        "UpdateResource" => update_resource,
        "DeleteResource" => delete_resource,
        "GetResource" => get_resource,
        "ListResources" => list_resources,
        "CreateApiKey" => create_api_key,
        "RevokeApiKey" => revoke_api_key,
        "DiscoverTools" => discover_tools,
        "RotateSessionKeys" => rotate_session_keys,
        "ListGateways" => list_gateways,
        "ListAudit" => list_audit,
        "GetStatus" => get_status,
    }
}

struct Call {
    headers: HeaderMap,
    conn: Option<TcpConnectInfo>,
    body: Bytes,
}

impl Call {
    async fn run<Req, Resp, F, Fut>(self, svc: Arc<AdminService>, f: F) -> Response
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(Arc<AdminService>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            &self.body
        };
        let msg: Req = match serde_json::from_slice(body) {
            Ok(m) => m,
            Err(e) => return error(Status::invalid_argument(format!("request body: {e}"))),
        };
        let mut req = tonic::Request::new(msg);
        *req.metadata_mut() = MetadataMap::from_headers(self.headers);
        if let Some(c) = self.conn {
            req.extensions_mut().insert(c);
        }
        match f(svc, req).await {
            Ok(resp) => match serde_json::to_vec(resp.get_ref()) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => error(Status::internal(e.to_string())),
            },
            Err(s) => error(s),
        }
    }
}

/// gRPC code → HTTP status, as grpc-gateway maps them.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: String,
    message: &'a str,
}

fn error(s: Status) -> Response {
    let body = ErrorBody {
        code: snake(&format!("{:?}", s.code())),
        message: s.message(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = (
        http_status(s.code()),
        [(header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response();
    if s.code() == Code::Unauthenticated {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// `InvalidArgument` → `invalid_argument`, as gRPC names its codes.
fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_read_like_grpc_names() {
        assert_eq!(super::snake("InvalidArgument"), "invalid_argument");
        assert_eq!(super::snake("NotFound"), "not_found");
        assert_eq!(super::snake("Ok"), "ok");
    }
}
