//! `/mcp`: every upstream the key may use, as one virtual MCP server.
use http::Response;
use crate::{body::Body, error::GatewayError, gateway::{Call, ReqCtx}, relay::Failure};

pub async fn handle(_call: Call<'_>, _ctx: &mut ReqCtx) -> Result<Response<Body>, Failure> {
    Err((GatewayError::MethodNotFound("aggregate".into()), None))
}
