//! List results, serialized once at startup for both eras: `tools/list` and
//! friends are the benchmark hot path, so they cost one id splice per request.

use serde_json::Value;
use serde_json::value::RawValue;

use super::{prompts, resources, stateless, tools};

/// One list result, pre-encoded for each wire.
pub(crate) struct Cached {
    pub legacy: Box<RawValue>,
    pub modern: Box<RawValue>,
}

impl Cached {
    fn new(result: Value) -> Cached {
        let modern = stateless::complete(result.clone(), true);
        Cached {
            legacy: raw(&result),
            modern: raw(&modern),
        }
    }

    pub fn get(&self, modern: bool) -> &RawValue {
        if modern { &self.modern } else { &self.legacy }
    }
}

fn raw(v: &Value) -> Box<RawValue> {
    // A `Value` always serializes to valid JSON.
    serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

pub(crate) struct Lists {
    pub tools: Cached,
    pub prompts: Cached,
    pub resources: Cached,
    pub templates: Cached,
}

impl Lists {
    pub fn build() -> Lists {
        Lists {
            tools: Cached::new(tools::list()),
            prompts: Cached::new(prompts::list()),
            resources: Cached::new(resources::list()),
            templates: Cached::new(resources::templates()),
        }
    }
}

/// Every list fits on one page, so this server hands out no cursor, and
/// any cursor a client sends is one it never issued: -32602, as the
/// pagination rules ask for an invalid cursor.
pub(crate) fn cursor_error(
    method: &str,
    params: &serde_json::Value,
) -> Option<super::rpc::RpcError> {
    let listing = matches!(
        method,
        "tools/list" | "resources/list" | "resources/templates/list" | "prompts/list"
    );
    let cursor = params.get("cursor").filter(|c| !c.is_null())?;
    listing.then(|| super::rpc::RpcError::invalid_params(format!("unknown cursor {cursor}")))
}
