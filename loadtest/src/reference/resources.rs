//! Resources and the resource template. `test://static-text` is listed first:
//! the 2026 caching scenario reads the first listed resource.

use serde_json::{Value, json};

use super::content::PNG;
use super::rpc::RpcError;

pub(crate) const WATCHED: &str = "test://watched-resource";

pub(crate) fn list() -> Value {
    json!({ "resources": [
        { "uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain" },
        { "uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource (PNG)", "mimeType": "image/png" },
        { "uri": WATCHED, "name": "watched-resource", "description": "A resource that can be subscribed to", "mimeType": "text/plain" }
    ] })
}

pub(crate) fn templates() -> Value {
    json!({ "resourceTemplates": [
        { "uriTemplate": "test://template/{id}/data", "name": "template", "description": "A resource template with an id parameter", "mimeType": "application/json" }
    ] })
}

/// `resources/read`. An unknown URI is an error carrying the URI, never empty contents.
pub(crate) fn read(uri: &str) -> Result<Value, RpcError> {
    let contents = match uri {
        "test://static-text" => {
            json!({ "uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource." })
        }
        "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG }),
        WATCHED => {
            json!({ "uri": uri, "mimeType": "text/plain", "text": "Watched resource content" })
        }
        _ => {
            match template_id(uri) {
                Some(id) => {
                    let text = json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") }).to_string();
                    json!({ "uri": uri, "mimeType": "application/json", "text": text })
                }
                None => {
                    return Err(
                        RpcError::invalid_params(format!("Resource not found: {uri}"))
                            .with_data(json!({ "uri": uri })),
                    );
                }
            }
        }
    };
    Ok(json!({ "contents": [contents] }))
}

/// Matches `test://template/{id}/data` with a non-empty, slash-free id.
fn template_id(uri: &str) -> Option<&str> {
    let id = uri
        .strip_prefix("test://template/")?
        .strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}
