//! The tool catalogue. `test_simple_text` comes first: the 2026 header-validation
//! scenario calls the first listed tool with `{}`.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::content::{PNG, WAV};
use super::listen::Change;
use super::mrtr::{self, StepFn, text_result};
use super::rpc::RpcError;
use super::streaming::Streaming;

/// How a tool runs.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// Computes its result at once from the arguments: the JSON fast path.
    Content(fn(&Map<String, Value>) -> Result<Value, RpcError>),
    /// Needs input from the client (see `mrtr`).
    Input(StepFn),
    /// Emits notifications over time on an SSE response (see `streaming`).
    Stream(Streaming),
    /// Signals a change to listeners (see `listen`).
    Signal(fn(&Map<String, Value>) -> Result<Change, RpcError>),
}

pub(crate) struct ToolDef {
    pub name: &'static str,
    pub description: &'static str,
    pub schema: Value,
    pub handler: Handler,
}

pub(crate) fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The `tools/list` result body (era-neutral; `lists` decorates it).
pub(crate) fn list() -> Value {
    let tools: Vec<Value> = TOOLS
        .iter()
        .map(|t| json!({ "name": t.name, "description": t.description, "inputSchema": t.schema }))
        .collect();
    json!({ "tools": tools })
}

fn no_args() -> Value {
    json!({ "type": "object", "properties": {} })
}

/// `{"message": string}`, required (the echoes).
fn message_arg() -> Value {
    json!({ "type": "object", "properties": { "message": { "type": "string" } }, "required": ["message"] })
}

fn tool(name: &'static str, description: &'static str, schema: Value, handler: Handler) -> ToolDef {
    ToolDef {
        name,
        description,
        schema,
        handler,
    }
}

static TOOLS: LazyLock<Vec<ToolDef>> = LazyLock::new(|| {
    use Handler::{Content, Input, Signal, Stream};
    vec![
        tool(
            "test_simple_text",
            "Returns a simple text response",
            no_args(),
            Content(simple_text),
        ),
        tool(
            "echo",
            "Returns the message it is given",
            message_arg(),
            Content(echo),
        ),
        // Long enough that a gateway prefixing it with an upstream name
        // must shorten it to stay within 64 characters.
        tool(
            "echo_under_a_name_long_enough_that_the_gateway_shortens_it",
            "Returns the message it is given",
            message_arg(),
            Content(echo),
        ),
        tool(
            "add",
            "Adds two numbers",
            json!({ "type": "object", "properties": { "a": { "type": "number" }, "b": { "type": "number" } }, "required": ["a", "b"] }),
            Content(add),
        ),
        tool(
            "test_image_content",
            "Returns an image",
            no_args(),
            Content(image),
        ),
        tool(
            "test_audio_content",
            "Returns audio",
            no_args(),
            Content(audio),
        ),
        tool(
            "test_embedded_resource",
            "Returns an embedded resource",
            no_args(),
            Content(embedded_resource),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, image and resource content",
            no_args(),
            Content(mixed),
        ),
        tool(
            "test_error_handling",
            "Always returns a tool error",
            no_args(),
            Content(error_handling),
        ),
        tool(
            "test_trigger_tool_change",
            "Signals notifications/tools/list_changed to listeners (the list itself is fixed)",
            no_args(),
            Signal(|_| Ok(Change::Tools)),
        ),
        tool(
            "test_trigger_prompt_change",
            "Signals notifications/prompts/list_changed to listeners (the list itself is fixed)",
            no_args(),
            Signal(|_| Ok(Change::Prompts)),
        ),
        tool(
            "test_trigger_resource_update",
            "Signals notifications/resources/updated for a URI to its subscribers",
            json!({ "type": "object", "properties": { "uri": { "type": "string" } }, "required": ["uri"] }),
            Signal(resource_update),
        ),
        tool(
            "test_tool_with_logging",
            "Sends log messages while it runs",
            no_args(),
            Stream(Streaming::Logging),
        ),
        tool(
            "test_tool_with_progress",
            "Reports progress while it runs",
            no_args(),
            Stream(Streaming::Progress),
        ),
        tool(
            "test_sampling",
            "Asks the client's LLM to answer a prompt",
            json!({ "type": "object", "properties": { "prompt": { "type": "string", "description": "The prompt to send" } }, "required": ["prompt"] }),
            Input(mrtr::sampling),
        ),
        tool(
            "test_elicitation",
            "Asks the user for information",
            json!({ "type": "object", "properties": { "message": { "type": "string", "description": "The message to show the user" } }, "required": ["message"] }),
            Input(mrtr::elicitation),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation with default values (SEP-1034)",
            no_args(),
            Input(mrtr::elicitation_defaults),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicitation with enum variants (SEP-1330)",
            no_args(),
            Input(mrtr::elicitation_enums),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Accepts input described by a JSON Schema 2020-12 document",
            json_schema_2020_12(),
            Content(json_schema_tool),
        ),
        tool(
            "test_reconnection",
            "Closes its SSE stream early and answers on resumption",
            no_args(),
            Stream(Streaming::Reconnection),
        ),
        tool(
            "test_missing_capability",
            "Requires the client's sampling capability",
            no_args(),
            Input(mrtr::missing_capability),
        ),
        tool(
            "test_streaming_elicitation",
            "Asks the user for a name",
            no_args(),
            Input(mrtr::streaming_elicitation),
        ),
        tool(
            "test_logging_tool",
            "Logs only when the request asks for a log level",
            no_args(),
            Stream(Streaming::Logging),
        ),
        tool(
            "test_input_required_result_elicitation",
            "Asks the user's name via input_required",
            no_args(),
            Input(mrtr::ir_elicitation),
        ),
        tool(
            "test_input_required_result_sampling",
            "Asks the client's LLM via input_required",
            no_args(),
            Input(mrtr::ir_sampling),
        ),
        tool(
            "test_input_required_result_list_roots",
            "Asks for the client's roots via input_required",
            no_args(),
            Input(mrtr::ir_list_roots),
        ),
        tool(
            "test_input_required_result_request_state",
            "Round-trips a requestState",
            no_args(),
            Input(mrtr::ir_request_state),
        ),
        tool(
            "test_input_required_result_multiple_inputs",
            "Asks for three inputs at once",
            no_args(),
            Input(mrtr::ir_multiple_inputs),
        ),
        tool(
            "test_input_required_result_multi_round",
            "Asks for input over two rounds",
            no_args(),
            Input(mrtr::ir_multi_round),
        ),
        tool(
            "test_input_required_result_tampered_state",
            "Rejects an altered requestState",
            no_args(),
            Input(mrtr::ir_tampered_state),
        ),
        tool(
            "test_input_required_result_capabilities",
            "Asks only for declared capabilities",
            no_args(),
            Input(mrtr::ir_capabilities),
        ),
        tool(
            "test_header_param",
            "Echoes a parameter the client mirrors into the Mcp-Param-Region header",
            json!({ "type": "object", "properties": { "region": { "type": "string", "x-mcp-header": "Region" } }, "required": ["region"] }),
            Content(header_param),
        ),
    ]
});

fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": { "address": { "$anchor": "addressDef", "type": "object",
            "properties": { "street": { "type": "string" }, "city": { "type": "string" } } } },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" }
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false
    })
}

fn resource_update(args: &Map<String, Value>) -> Result<Change, RpcError> {
    match args.get("uri").and_then(Value::as_str) {
        Some(uri) => Ok(Change::Resource(uri.to_owned())),
        None => Err(RpcError::invalid_params(
            "test_trigger_resource_update: 'uri' must be a string",
        )),
    }
}

fn simple_text(_: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(text_result("This is a simple text response for testing."))
}

fn echo(args: &Map<String, Value>) -> Result<Value, RpcError> {
    match args.get("message").and_then(Value::as_str) {
        Some(message) => Ok(text_result(message)),
        None => Err(RpcError::invalid_params("echo: 'message' must be a string")),
    }
}

fn add(args: &Map<String, Value>) -> Result<Value, RpcError> {
    let num = |k: &str| args.get(k).and_then(Value::as_f64);
    match (num("a"), num("b")) {
        (Some(a), Some(b)) => {
            // Integers print without a trailing ".0" so `1 + 2` reads "3".
            let (ia, ib) = (
                args.get("a").and_then(Value::as_i64),
                args.get("b").and_then(Value::as_i64),
            );
            let text = match (ia, ib) {
                (Some(x), Some(y)) => x
                    .checked_add(y)
                    .map_or_else(|| (a + b).to_string(), |s| s.to_string()),
                _ => (a + b).to_string(),
            };
            Ok(text_result(text))
        }
        _ => Err(RpcError::invalid_params("add: 'a' and 'b' must be numbers")),
    }
}

fn image(_: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(json!({ "content": [{ "type": "image", "data": PNG, "mimeType": "image/png" }] }))
}

fn audio(_: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(json!({ "content": [{ "type": "audio", "data": WAV, "mimeType": "audio/wav" }] }))
}

fn embedded_resource(_: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(json!({ "content": [{ "type": "resource", "resource": {
        "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content." } }] }))
}

fn mixed(_: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(json!({ "content": [
        { "type": "text", "text": "Multiple content types test:" },
        { "type": "image", "data": PNG, "mimeType": "image/png" },
        { "type": "resource", "resource": { "uri": "test://mixed-content-resource", "mimeType": "application/json",
            "text": "{\"test\":\"data\",\"value\":123}" } }
    ] }))
}

fn error_handling(_: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(
        json!({ "isError": true, "content": [{ "type": "text", "text": "This tool intentionally returns an error for testing" }] }),
    )
}

fn json_schema_tool(args: &Map<String, Value>) -> Result<Value, RpcError> {
    Ok(text_result(format!(
        "Received: {}",
        Value::Object(args.clone())
    )))
}

fn header_param(args: &Map<String, Value>) -> Result<Value, RpcError> {
    let region = args.get("region").and_then(Value::as_str).unwrap_or("");
    Ok(text_result(format!("Region: {region}")))
}
