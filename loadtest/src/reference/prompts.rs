//! Prompts, including the MRTR prompt `test_input_required_result_prompt`.

use serde_json::{Value, json};

use super::content::PNG;
use super::mrtr::{InputCtx, Step, elicit, elicit_answer};
use super::rpc::RpcError;

pub(crate) fn list() -> Value {
    json!({ "prompts": [
        { "name": "test_simple_prompt", "description": "A simple prompt without arguments" },
        { "name": "test_prompt_with_arguments", "description": "A prompt with two required arguments", "arguments": [
            { "name": "arg1", "description": "First test argument", "required": true },
            { "name": "arg2", "description": "Second test argument", "required": true } ] },
        { "name": "test_prompt_with_embedded_resource", "description": "A prompt that embeds a resource", "arguments": [
            { "name": "resourceUri", "description": "URI of the resource to embed", "required": true } ] },
        { "name": "test_prompt_with_image", "description": "A prompt that includes an image" },
        { "name": "test_input_required_result_prompt", "description": "A prompt that asks the user for context first" }
    ] })
}

/// `prompts/get` as a step function (only the MRTR prompt ever asks for input).
pub(crate) fn get(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    let arg = |k: &str| {
        cx.args
            .get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params(format!("missing required argument '{k}'")))
    };
    let messages = match cx.name {
        "test_simple_prompt" => json!([user_text("This is a simple prompt for testing.")]),
        "test_prompt_with_arguments" => {
            let (a1, a2) = (arg("arg1")?, arg("arg2")?);
            json!([user_text(&format!(
                "Prompt with arguments: arg1='{a1}', arg2='{a2}'"
            ))])
        }
        "test_prompt_with_embedded_resource" => {
            let uri = arg("resourceUri")?;
            json!([
                { "role": "user", "content": { "type": "resource", "resource": {
                    "uri": uri, "mimeType": "text/plain", "text": "Embedded resource content for testing." } } },
                user_text("Please process the embedded resource above.")
            ])
        }
        "test_prompt_with_image" => json!([
            { "role": "user", "content": { "type": "image", "data": PNG, "mimeType": "image/png" } },
            user_text("Please analyze the image above.")
        ]),
        "test_input_required_result_prompt" => return context_prompt(cx),
        other => return Err(RpcError::invalid_params(format!("Unknown prompt: {other}"))),
    };
    Ok(Step::Complete(json!({ "messages": messages })))
}

fn user_text(text: &str) -> Value {
    json!({ "role": "user", "content": { "type": "text", "text": text } })
}

fn context_prompt(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    match cx.responses.and_then(|r| r.get("user_context")) {
        Some(r) => {
            let (_, content) = elicit_answer(r)?;
            let context = content
                .get("context")
                .and_then(Value::as_str)
                .unwrap_or("none");
            let text = format!("Answer using this context: {context}");
            Ok(Step::Complete(
                json!({ "description": "A prompt built from user context", "messages": [user_text(&text)] }),
            ))
        }
        None => {
            let schema = json!({ "type": "object", "properties": { "context": { "type": "string" } }, "required": ["context"] });
            let mut requests = serde_json::Map::new();
            requests.insert(
                "user_context".into(),
                elicit("What context should the prompt use?", schema),
            );
            Ok(Step::Input {
                requests,
                state: None,
            })
        }
    }
}

/// `completion/complete`: candidates for prompt arguments, filtered by prefix.
pub(crate) fn completion(params: &Value) -> Result<Value, RpcError> {
    let value = params
        .pointer("/argument/value")
        .and_then(Value::as_str)
        .unwrap_or("");
    let values: Vec<&str> = ["test", "testValue1", "testValue2", "example"]
        .into_iter()
        .filter(|c| c.starts_with(value))
        .collect();
    Ok(json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } }))
}
