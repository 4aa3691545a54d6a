//! Tools that emit notifications while they run, on the request's SSE stream.

use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::mrtr::text_result;
use super::rpc;
use super::sse::Sink;
use super::stateless;

#[derive(Clone, Copy, Debug)]
pub(crate) enum Streaming {
    /// Three `notifications/message` at `info`, ~50 ms apart, then a result.
    Logging,
    /// `notifications/progress` 0, 50, 100 of 100, ~50 ms apart, then a result.
    Progress,
    /// Closes the POST stream after the priming event and answers on resumption.
    Reconnection,
}

impl Streaming {
    /// The `retry:` hint of the priming event: only the polling tool wants the
    /// client to come back quickly.
    pub fn retry_ms(self) -> Option<u32> {
        matches!(self, Streaming::Reconnection).then_some(500)
    }
}

const STEP: Duration = Duration::from_millis(50);
const INFO: u8 = 1;

/// Writes one request's notifications and final response.
pub(crate) struct Emitter {
    pub sink: Sink,
    pub id: Box<RawValue>,
    /// `_meta.progressToken` of the request; no progress is sent without it.
    pub progress_token: Option<Value>,
    /// Minimum level for `notifications/message`; `None` sends none (2026 without `logLevel`).
    pub min_level: Option<u8>,
    /// Whether results need the 2026 decoration.
    pub modern: bool,
}

impl Emitter {
    fn log(&mut self, level: u8, data: &str) -> bool {
        if self.min_level.is_none_or(|min| level < min) {
            return true;
        }
        let name = super::session::LEVELS
            .get(usize::from(level))
            .copied()
            .unwrap_or("info");
        let params = json!({ "level": name, "logger": super::SERVER_NAME, "data": data });
        self.sink
            .send(&rpc::encode_notification("notifications/message", &params))
    }

    fn progress(&mut self, progress: u32, total: u32) -> bool {
        let Some(token) = &self.progress_token else {
            return true;
        };
        let params = json!({ "progressToken": token, "progress": progress, "total": total });
        self.sink
            .send(&rpc::encode_notification("notifications/progress", &params))
    }

    fn finish(mut self, result: Value) {
        let result = if self.modern {
            stateless::complete(result, false)
        } else {
            result
        };
        self.sink.send(&rpc::encode_result(&self.id, &result));
        self.sink.finish();
    }
}

/// Runs a streaming tool to completion, or until the client goes away (which on
/// the 2026 wire is cancellation).
pub(crate) async fn run(kind: Streaming, mut em: Emitter) {
    match kind {
        Streaming::Logging => {
            for (i, msg) in [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]
            .into_iter()
            .enumerate()
            {
                if i > 0 {
                    tokio::time::sleep(STEP).await;
                }
                if !em.log(INFO, msg) {
                    return;
                }
            }
            em.finish(text_result("Tool with logging executed successfully"));
        }
        Streaming::Progress => {
            for (i, p) in [0, 50, 100].into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(STEP).await;
                }
                if !em.progress(p, 100) {
                    return;
                }
            }
            let text = match &em.progress_token {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "Progress complete".to_owned(),
            };
            em.finish(text_result(text));
        }
        Streaming::Reconnection => {
            em.sink.detach();
            tokio::time::sleep(Duration::from_millis(100)).await;
            em.finish(text_result(
                "Reconnection test completed: the result was delivered after the stream closed",
            ));
        }
    }
}
