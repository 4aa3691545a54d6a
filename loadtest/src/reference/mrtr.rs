//! Tools that need input from the client (sampling, elicitation, roots).
//!
//! Each is written once as a step function over the answers received so far:
//! it either completes or asks for more input. The 2026 wire turns an `Input`
//! step into an `input_required` result (MRTR, SEP-2322) that the client retries
//! with `inputResponses`; the 2025 wire sends real server→client requests on the
//! POST's SSE stream and calls the step again with the answers (see `legacy`).

use serde_json::{Map, Value, json};

use super::rpc::{MISSING_CAPABILITY, RpcError};
use super::seal::Sealer;

/// Everything a step function may look at.
pub(crate) struct InputCtx<'a> {
    /// The tool or prompt name; sealed states are bound to it.
    pub name: &'a str,
    pub args: &'a Map<String, Value>,
    /// Capabilities the client declared (this request's `_meta`, or `initialize`).
    pub caps: &'a Value,
    /// `inputResponses`, keyed like the `inputRequests` that asked for them.
    pub responses: Option<&'a Map<String, Value>>,
    /// The `requestState` echoed by the client, still sealed.
    pub state: Option<&'a str>,
    pub sealer: &'a Sealer,
}

/// The outcome of one step.
pub(crate) enum Step {
    /// The final result (without `resultType`; the wire adds it).
    Complete(Value),
    /// Input needed: `{key: {method, params}}` plus an optional sealed state.
    Input {
        requests: Map<String, Value>,
        state: Option<String>,
    },
}

pub(crate) type StepFn = fn(&InputCtx<'_>) -> Result<Step, RpcError>;

impl InputCtx<'_> {
    fn has_cap(&self, cap: &str) -> bool {
        self.caps.get(cap).is_some_and(|v| !v.is_null())
    }

    fn require_cap(&self, cap: &str) -> Result<(), RpcError> {
        if self.has_cap(cap) {
            return Ok(());
        }
        Err(RpcError::new(
            MISSING_CAPABILITY,
            format!("This request requires the client capability '{cap}'"),
        )
        .with_data(json!({ "requiredCapabilities": { cap: {} } })))
    }

    fn response(&self, key: &str) -> Option<&Value> {
        self.responses?.get(key)
    }

    fn seal(&self, data: &str) -> String {
        self.sealer.seal(self.name, data)
    }

    /// The unsealed state: `Ok(None)` when absent, an error when altered.
    fn open_state(&self) -> Result<Option<String>, RpcError> {
        match self.state {
            None => Ok(None),
            Some(token) => {
                self.sealer.open(self.name, token).map(Some).ok_or_else(|| {
                    RpcError::invalid_params("requestState failed its integrity check")
                })
            }
        }
    }

    fn str_arg(&self, key: &str) -> Result<&str, RpcError> {
        self.args.get(key).and_then(Value::as_str).ok_or_else(|| {
            RpcError::invalid_params(format!("missing required string argument '{key}'"))
        })
    }
}

pub(crate) fn text_result(text: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": text.into() }] })
}

fn one(key: &str, request: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_owned(), request);
    m
}

pub(crate) fn elicit(message: &str, schema: Value) -> Value {
    json!({ "method": "elicitation/create", "params": { "message": message, "requestedSchema": schema } })
}

fn sample(prompt: &str, max_tokens: u32) -> Value {
    json!({ "method": "sampling/createMessage", "params": {
        "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
        "maxTokens": max_tokens,
    }})
}

fn list_roots() -> Value {
    json!({ "method": "roots/list", "params": {} })
}

fn input(requests: Map<String, Value>, state: Option<String>) -> Result<Step, RpcError> {
    Ok(Step::Input { requests, state })
}

/// An ElicitResult: `(action, content)`.
pub(crate) fn elicit_answer(v: &Value) -> Result<(&str, Map<String, Value>), RpcError> {
    let action = v
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("malformed elicitation response"))?;
    let content = v
        .get("content")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Ok((action, content))
}

/// The text of a CreateMessageResult (content may be one block or an array).
fn sample_answer(v: &Value) -> Result<String, RpcError> {
    let content = v
        .get("content")
        .ok_or_else(|| RpcError::invalid_params("malformed sampling response"))?;
    let block = content
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or(content);
    Ok(block
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned())
}

fn roots_answer(v: &Value) -> Result<usize, RpcError> {
    v.get("roots")
        .and_then(Value::as_array)
        .map(Vec::len)
        .ok_or_else(|| RpcError::invalid_params("malformed roots response"))
}

fn name_schema() -> Value {
    json!({ "type": "object", "properties": { "name": { "type": "string" } }, "required": ["name"] })
}

fn confirm_schema() -> Value {
    json!({ "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] })
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

// --- 2025 server→client tools (sampling / elicitation) ---

pub(crate) fn sampling(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("sampling")?;
    let prompt = cx.str_arg("prompt")?;
    match cx.response("sampling") {
        Some(r) => Ok(Step::Complete(text_result(format!(
            "LLM response: {}",
            sample_answer(r)?
        )))),
        None => input(one("sampling", sample(prompt, 100)), None),
    }
}

pub(crate) fn elicitation(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    let message = cx.str_arg("message")?;
    let schema = json!({ "type": "object", "properties": {
            "username": { "type": "string", "description": "User's response" },
            "email": { "type": "string", "description": "User's email address" } },
        "required": ["username", "email"] });
    elicit_and_report(cx, "User response", message, schema)
}

pub(crate) fn elicitation_defaults(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    let schema = json!({ "type": "object", "properties": {
        "name": { "type": "string", "default": "John Doe" },
        "age": { "type": "integer", "default": 30 },
        "score": { "type": "number", "default": 95.5 },
        "status": { "type": "string", "enum": ["active", "inactive", "pending"], "default": "active" },
        "verified": { "type": "boolean", "default": true } } });
    elicit_and_report(
        cx,
        "Elicitation completed",
        "Please review and update the form fields with defaults",
        schema,
    )
}

pub(crate) fn elicitation_enums(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    let schema = json!({ "type": "object", "properties": {
        "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
        "titledSingle": { "type": "string", "oneOf": [
            { "const": "value1", "title": "First Option" },
            { "const": "value2", "title": "Second Option" },
            { "const": "value3", "title": "Third Option" } ] },
        "legacyEnum": { "type": "string", "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"] },
        "untitledMulti": { "type": "array", "minItems": 1, "maxItems": 3,
            "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
        "titledMulti": { "type": "array", "minItems": 1, "maxItems": 3, "items": { "anyOf": [
            { "const": "value1", "title": "First Choice" },
            { "const": "value2", "title": "Second Choice" },
            { "const": "value3", "title": "Third Choice" } ] } } } });
    elicit_and_report(
        cx,
        "Elicitation completed",
        "Please select options from the enum fields",
        schema,
    )
}

fn elicit_and_report(
    cx: &InputCtx<'_>,
    label: &str,
    message: &str,
    schema: Value,
) -> Result<Step, RpcError> {
    match cx.response("elicitation") {
        Some(r) => {
            let (action, content) = elicit_answer(r)?;
            let content = Value::Object(content);
            Ok(Step::Complete(text_result(format!(
                "{label}: action={action}, content={content}"
            ))))
        }
        None => input(one("elicitation", elicit(message, schema)), None),
    }
}

// --- 2026 diagnostics ---

pub(crate) fn missing_capability(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("sampling")?;
    match cx.response("sampling") {
        Some(r) => Ok(Step::Complete(text_result(format!(
            "Sampling answered: {}",
            sample_answer(r)?
        )))),
        None => input(one("sampling", sample("Say hello", 50)), None),
    }
}

pub(crate) fn streaming_elicitation(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    match cx.response("user_name") {
        Some(r) => {
            let (action, content) = elicit_answer(r)?;
            Ok(Step::Complete(text_result(format!(
                "Elicitation {action}: {}",
                str_of(&content, "name")
            ))))
        }
        None => input(
            one("user_name", elicit("What is your name?", name_schema())),
            None,
        ),
    }
}

// --- MRTR scenarios (input-required-result-*) ---

pub(crate) fn ir_elicitation(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    match cx.response("user_name") {
        Some(r) => {
            let (action, content) = elicit_answer(r)?;
            if action != "accept" {
                return Ok(Step::Complete(text_result(format!(
                    "No name given (action={action})"
                ))));
            }
            let name = content
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("stranger");
            Ok(Step::Complete(text_result(format!("Hello, {name}!"))))
        }
        None => input(
            one("user_name", elicit("What is your name?", name_schema())),
            None,
        ),
    }
}

pub(crate) fn ir_sampling(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("sampling")?;
    match cx.response("capital_question") {
        Some(r) => Ok(Step::Complete(text_result(format!(
            "The model answered: {}",
            sample_answer(r)?
        )))),
        None => input(
            one(
                "capital_question",
                sample("What is the capital of France?", 100),
            ),
            None,
        ),
    }
}

pub(crate) fn ir_list_roots(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("roots")?;
    match cx.response("client_roots") {
        Some(r) => Ok(Step::Complete(text_result(format!(
            "The client has {} root(s)",
            roots_answer(r)?
        )))),
        None => input(one("client_roots", list_roots()), None),
    }
}

pub(crate) fn ir_request_state(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    confirm_with_state(cx, "state-ok")
}

pub(crate) fn ir_tampered_state(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    confirm_with_state(cx, "state verified")
}

/// Asks for a confirmation and carries a sealed state; the retry must echo it intact.
fn confirm_with_state(cx: &InputCtx<'_>, done: &str) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    let state = cx.open_state()?;
    match (state.as_deref(), cx.response("confirm")) {
        (Some("confirm"), Some(r)) => {
            let (action, content) = elicit_answer(r)?;
            let ok = content.get("ok").and_then(Value::as_bool).unwrap_or(false);
            Ok(Step::Complete(text_result(format!(
                "{done}: action={action}, ok={ok}"
            ))))
        }
        _ => input(
            one("confirm", elicit("Please confirm", confirm_schema())),
            Some(cx.seal("confirm")),
        ),
    }
}

pub(crate) fn ir_multiple_inputs(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    for cap in ["elicitation", "sampling", "roots"] {
        cx.require_cap(cap)?;
    }
    let state = cx.open_state()?;
    let answers = (
        cx.response("user_name"),
        cx.response("greeting"),
        cx.response("client_roots"),
    );
    if let (Some("multiple"), (Some(user), Some(greeting), Some(roots))) =
        (state.as_deref(), answers)
    {
        let (_, content) = elicit_answer(user)?;
        let text = format!(
            "Name: {}; greeting: {}; roots: {}",
            str_of(&content, "name"),
            sample_answer(greeting)?,
            roots_answer(roots)?
        );
        return Ok(Step::Complete(text_result(text)));
    }
    let mut requests = one("user_name", elicit("What is your name?", name_schema()));
    requests.insert("greeting".into(), sample("Generate a greeting", 50));
    requests.insert("client_roots".into(), list_roots());
    input(requests, Some(cx.seal("multiple")))
}

pub(crate) fn ir_multi_round(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    cx.require_cap("elicitation")?;
    let state = cx.open_state()?;
    let round1 = || {
        let schema = name_schema();
        input(
            one("step1", elicit("Step 1: What is your name?", schema)),
            Some(cx.seal("round1")),
        )
    };
    match state.as_deref() {
        Some("round1") => match cx.response("step1") {
            Some(r) => {
                let (_, content) = elicit_answer(r)?;
                let name = str_of(&content, "name");
                let schema = json!({ "type": "object", "properties": { "color": { "type": "string" } }, "required": ["color"] });
                let state = cx.seal(&format!("round2\n{name}"));
                input(
                    one(
                        "step2",
                        elicit("Step 2: What is your favorite color?", schema),
                    ),
                    Some(state),
                )
            }
            None => round1(),
        },
        Some(s) if s.starts_with("round2\n") => match cx.response("step2") {
            Some(r) => {
                let name = &s["round2\n".len()..];
                let (_, content) = elicit_answer(r)?;
                let color = str_of(&content, "color");
                Ok(Step::Complete(text_result(format!(
                    "Hello {name}, your favorite color is {color}"
                ))))
            }
            None => {
                let schema = json!({ "type": "object", "properties": { "color": { "type": "string" } }, "required": ["color"] });
                input(
                    one(
                        "step2",
                        elicit("Step 2: What is your favorite color?", schema),
                    ),
                    Some(cx.seal(s)),
                )
            }
        },
        _ => round1(),
    }
}

/// Asks only for what the client declared; with no input capability at all it fails.
pub(crate) fn ir_capabilities(cx: &InputCtx<'_>) -> Result<Step, RpcError> {
    if let Some(responses) = cx.responses
        && !responses.is_empty()
    {
        return Ok(Step::Complete(text_result(format!(
            "Received {} input response(s)",
            responses.len()
        ))));
    }
    let mut requests = Map::new();
    if cx.has_cap("elicitation") {
        requests.insert(
            "user_name".into(),
            elicit("What is your name?", name_schema()),
        );
    }
    if cx.has_cap("sampling") {
        requests.insert("greeting".into(), sample("Generate a greeting", 50));
    }
    if cx.has_cap("roots") {
        requests.insert("client_roots".into(), list_roots());
    }
    if requests.is_empty() {
        cx.require_cap("sampling")?;
    }
    input(requests, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        f: StepFn,
        caps: Value,
        responses: Option<Value>,
        state: Option<&str>,
    ) -> Result<Step, RpcError> {
        let sealer = Sealer::from_key(b"k");
        let args = Map::new();
        let responses = responses.and_then(|r| r.as_object().cloned());
        let cx = InputCtx {
            name: "t",
            args: &args,
            caps: &caps,
            responses: responses.as_ref(),
            state,
            sealer: &sealer,
        };
        f(&cx)
    }

    #[test]
    fn capability_check_asks_only_for_declared_inputs() {
        let Ok(Step::Input { requests, .. }) =
            run(ir_capabilities, json!({"sampling":{}}), None, None)
        else {
            panic!("expected input_required");
        };
        assert!(
            requests
                .values()
                .all(|r| r["method"] != "elicitation/create")
        );
        assert!(!requests.is_empty());
        assert!(run(ir_capabilities, json!({}), None, None).is_err());
    }

    #[test]
    fn tampered_state_is_an_error() {
        let Ok(Step::Input {
            state: Some(state), ..
        }) = run(ir_tampered_state, json!({"elicitation":{}}), None, None)
        else {
            panic!("expected input_required with state");
        };
        let answer = json!({"confirm":{"action":"accept","content":{"ok":true}}});
        assert!(matches!(
            run(
                ir_tampered_state,
                json!({"elicitation":{}}),
                Some(answer.clone()),
                Some(&state)
            ),
            Ok(Step::Complete(_))
        ));
        let tampered = format!("{state}-TAMPERED");
        assert!(
            run(
                ir_tampered_state,
                json!({"elicitation":{}}),
                Some(answer),
                Some(&tampered)
            )
            .is_err()
        );
    }
}
