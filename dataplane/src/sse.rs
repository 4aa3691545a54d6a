//! Server-Sent Events: an incremental, bounded parser for upstream streams
//! and the encoder for what we send. Sans-IO: feed bytes, take events.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl Event {
    pub fn message(data: String) -> Self {
        Event {
            data,
            ..Default::default()
        }
    }

    /// Encodes the event; multi-line data becomes several `data:` lines.
    pub fn encode(&self) -> Bytes {
        let mut out = String::with_capacity(self.data.len() + 32);
        if let Some(id) = &self.id {
            out.push_str("id: ");
            out.push_str(id);
            out.push('\n');
        }
        if let Some(ev) = &self.event {
            out.push_str("event: ");
            out.push_str(ev);
            out.push('\n');
        }
        if let Some(r) = self.retry {
            out.push_str(&format!("retry: {r}\n"));
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        Bytes::from(out)
    }
}

/// A comment line that keeps idle connections (and proxies) from timing out.
pub fn keepalive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE event exceeds {0} bytes")]
    TooLarge(usize),
    #[error("SSE stream is not UTF-8")]
    Utf8,
}

/// Parses an SSE byte stream per the WHATWG rules (LF, CRLF or CR line ends,
/// `field: value`, comments, blank line dispatches).
pub struct Parser {
    buf: BytesMut,
    pending: Event,
    has_data: bool,
    has_fields: bool,
    event_bytes: usize,
    max_event: usize,
    /// The stream ended a line with CR; a following LF belongs to it.
    skip_lf: bool,
}

impl Parser {
    pub fn new(max_event: usize) -> Self {
        Parser {
            buf: BytesMut::new(),
            pending: Event::default(),
            has_data: false,
            has_fields: false,
            event_bytes: 0,
            max_event,
            skip_lf: false,
        }
    }

    /// Feeds bytes; completed events are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        self.buf.extend_from_slice(chunk);
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.skip_lf = false;
            }
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.event_bytes + self.buf.len() > self.max_event {
                    return Err(SseError::TooLarge(self.max_event));
                }
                return Ok(());
            };
            let line = self.buf.split_to(pos);
            let term = self.buf[0];
            self.buf.advance(1);
            if term == b'\r' {
                self.skip_lf = true;
            }
            self.event_bytes += line.len() + 1;
            if self.event_bytes > self.max_event {
                return Err(SseError::TooLarge(self.max_event));
            }
            self.line(&line, out)?;
        }
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data || self.has_fields {
                let mut ev = std::mem::take(&mut self.pending);
                if ev.data.ends_with('\n') {
                    ev.data.pop();
                }
                if self.has_data || ev.id.is_some() || ev.retry.is_some() {
                    out.push(ev);
                }
            }
            self.has_data = false;
            self.has_fields = false;
            self.event_bytes = 0;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::Utf8)?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.pending.data.push_str(value);
                self.pending.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => {
                self.pending.id = Some(value.to_owned());
                self.has_fields = true;
            }
            "event" => {
                self.pending.event = Some(value.to_owned());
                self.has_fields = true;
            }
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.pending.retry = Some(ms);
                    self.has_fields = true;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(input: &str, chunk: usize) -> Vec<Event> {
        let mut p = Parser::new(1 << 20);
        let mut out = vec![];
        for c in input.as_bytes().chunks(chunk) {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn parses_fields_comments_and_line_endings_in_any_chunking() {
        let input = ": hello\r\nid: 7\r\nevent: message\r\ndata: {\"a\":1}\r\ndata: x\r\n\r\ndata: two\r\rdata:three\n\n";
        for chunk in [1, 2, 3, 7, 1000] {
            let evs = parse_in_chunks(input, chunk);
            assert_eq!(evs.len(), 3, "chunk {chunk}: {evs:?}");
            assert_eq!(evs[0].id.as_deref(), Some("7"));
            assert_eq!(evs[0].event.as_deref(), Some("message"));
            assert_eq!(evs[0].data, "{\"a\":1}\nx");
            assert_eq!(evs[1].data, "two");
            assert_eq!(evs[2].data, "three");
        }
    }

    #[test]
    fn encode_round_trips() {
        let ev = Event {
            id: Some("42".into()),
            event: Some("message".into()),
            data: "line1\nline2".into(),
            retry: Some(1000),
        };
        let mut p = Parser::new(1024);
        let mut out = vec![];
        p.feed(&ev.encode(), &mut out).unwrap();
        assert_eq!(out, vec![ev]);
    }

    #[test]
    fn oversized_events_are_refused_even_without_newlines() {
        let mut p = Parser::new(16);
        let mut out = vec![];
        assert_eq!(p.feed(&[b'x'; 64], &mut out), Err(SseError::TooLarge(16)));
        let mut p = Parser::new(16);
        assert_eq!(
            p.feed(b"data: 0123456789\ndata: 0123456789\n", &mut out),
            Err(SseError::TooLarge(16))
        );
    }

    #[test]
    fn priming_event_with_only_an_id_is_kept() {
        // 2025-11-25 servers may send an event with an id and empty data first.
        let evs = parse_in_chunks("id: 1\ndata:\n\n", 4);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].data, "");
    }
}
