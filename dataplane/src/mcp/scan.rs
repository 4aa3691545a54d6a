//! A strict JSON reader for `Peek`: it checks a whole body against RFC 8259
//! and hands out the few top-level fields the gateway routes on, borrowed
//! where they have no escapes.
//!
//! Written for the relay's path rather than taken from serde: a derived
//! `Deserialize` of the peek cost 2.2k instructions for a 100-byte
//! `tools/call`, most of it in visitors and field matching the body does
//! not need. What it accepts and refuses is serde_json's, which the tests
//! check on the same inputs: a syntax error (`Error::Syntax`) where serde
//! reports one, a data error (`Error::Data`: a known field of the wrong
//! type, or given twice) where serde's derive reports one, whichever comes
//! first in the body. Two differences, both on purpose: nesting is bounded
//! at 128 levels everywhere (serde_json bounds the values it deserializes
//! so, but not those it skips), and a by-position `params` array is read
//! as naming nothing (serde's derive read it as the fields in order).
//!
//! The input is UTF-8 already (checked once by the caller), so every slice
//! between ASCII delimiters is text.

use std::borrow::Cow;

/// The deepest nesting read: serde_json's recursion limit, here for every
/// value (a fixed bound on untrusted input; MCP messages nest a few levels).
const MAX_DEPTH: u32 = 128;

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Not JSON: the message says what was expected, and where.
    Syntax(String),
    /// JSON, but not the message shape the gateway reads.
    Data(String),
}

pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(text: &'a str) -> Self {
        Reader { text, pos: 0 }
    }

    /// Where the reader is, in bytes from the start.
    pub fn pos(&self) -> usize {
        self.pos
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn syntax<T>(&self, what: &str) -> Result<T, Error> {
        Err(Error::Syntax(match self.bytes().get(self.pos) {
            Some(_) => format!("{what} at byte {}", self.pos),
            None => format!("EOF while parsing: {what} at byte {}", self.pos),
        }))
    }

    pub fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek_byte(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    /// Whether `b` is next (after whitespace), leaving it there.
    pub fn at(&mut self, b: u8) -> bool {
        self.ws();
        self.peek_byte() == Some(b)
    }

    /// Consumes `b` if it is next (after whitespace).
    pub fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.peek_byte() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub fn expect(&mut self, b: u8, what: &str) -> Result<(), Error> {
        if self.eat(b) {
            Ok(())
        } else {
            self.syntax(what)
        }
    }

    /// After whitespace, nothing may follow.
    pub fn end(&mut self) -> Result<(), Error> {
        self.ws();
        if self.pos == self.text.len() {
            Ok(())
        } else {
            self.syntax("trailing characters")
        }
    }

    /// The members of an object whose `{` was read. A member named in
    /// `known` may come once (serde's derive refuses a duplicate, before
    /// the colon): `field` reads its value, given the name's index; the
    /// others are skipped.
    pub fn fields(
        &mut self,
        known: &[&str],
        mut field: impl FnMut(&mut Self, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.eat(b'}') {
            return Ok(());
        }
        let mut seen = 0u32;
        loop {
            self.ws();
            if self.peek_byte() != Some(b'"') {
                return self.syntax("expected a key");
            }
            self.pos += 1;
            let key = self.string(true)?;
            let index = known.iter().position(|k| *k == key);
            if let Some(i) = index {
                if seen & (1 << i) != 0 {
                    return Err(Error::Data(format!("duplicate field `{key}`")));
                }
                seen |= 1 << i;
            }
            self.expect(b':', "expected `:`")?;
            self.ws();
            match index {
                Some(i) => field(self, i)?,
                None => self.skip()?,
            }
            if self.eat(b',') {
                continue;
            }
            return self.expect(b'}', "expected `,` or `}`");
        }
    }

    /// A string, `null`, or a data error naming `field`.
    pub fn string_or_null(&mut self, field: &str) -> Result<Option<Cow<'a, str>>, Error> {
        match self.peek_byte() {
            Some(b'"') => {
                self.pos += 1;
                self.string(true).map(Some)
            }
            Some(b'n') => self.literal("null").map(|()| None),
            _ => self.wrong_type(field, "a string"),
        }
    }

    /// Whether the next value is `null` (consumed if so).
    pub fn null(&mut self) -> Result<bool, Error> {
        if self.peek_byte() == Some(b'n') {
            self.literal("null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// A data error for `field`, as serde reports it: a container by its
    /// first byte, a scalar once it is read (a malformed one is a syntax
    /// error; a string is decoded).
    pub fn wrong_type<T>(&mut self, field: &str, want: &str) -> Result<T, Error> {
        let got = match self.peek_byte() {
            Some(b'{') => "a map",
            Some(b'[') => "a sequence",
            Some(b'"') => {
                self.pos += 1;
                self.string(true)?;
                "a string"
            }
            Some(b't') => self.literal("true").map(|()| "a boolean")?,
            Some(b'f') => self.literal("false").map(|()| "a boolean")?,
            Some(b'n') => self.literal("null").map(|()| "null")?,
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                self.number()?;
                // serde reads the number whole to name it: one out of
                // range is a syntax error there.
                if self.text[start..self.pos]
                    .parse::<serde_json::Number>()
                    .is_err()
                {
                    self.pos = start;
                    return self.syntax("number out of range");
                }
                "a number"
            }
            _ => return self.syntax("expected value"),
        };
        Err(Error::Data(format!(
            "invalid type for `{field}`: {got}, expected {want}"
        )))
    }

    /// A value's text, or `None` for `null` (serde's `Option`).
    pub fn raw_unless_null(&mut self) -> Result<Option<&'a str>, Error> {
        if self.null()? {
            Ok(None)
        } else {
            self.raw().map(Some)
        }
    }

    /// Skips one value, checking it; returns its text.
    pub fn raw(&mut self) -> Result<&'a str, Error> {
        let start = self.pos;
        self.skip()?;
        Ok(&self.text[start..self.pos])
    }

    /// Skips one value (after whitespace), checking it. Containers are
    /// tracked on a bit stack (set: object), so depth costs no recursion.
    pub fn skip(&mut self) -> Result<(), Error> {
        let mut stack: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value.
            self.ws();
            match self.peek_byte() {
                Some(b'{') | Some(b'[') => {
                    let object = self.peek_byte() == Some(b'{');
                    if depth == MAX_DEPTH {
                        return self.syntax("recursion limit exceeded");
                    }
                    self.pos += 1;
                    stack = (stack << 1) | u128::from(object);
                    depth += 1;
                    let close = if object { b'}' } else { b']' };
                    if self.eat(close) {
                        stack >>= 1;
                        depth -= 1;
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    self.string(false)?;
                }
                Some(b't') => self.literal("true")?,
                Some(b'f') => self.literal("false")?,
                Some(b'n') => self.literal("null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return self.syntax("expected value"),
            }
            // After a value: the next member or element, or the ends of
            // the containers it closes.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = stack & 1 == 1;
                if self.eat(b',') {
                    if object {
                        self.key()?;
                    }
                    break;
                }
                let close = if object { b'}' } else { b']' };
                if !self.eat(close) {
                    return self.syntax(if object {
                        "expected `,` or `}`"
                    } else {
                        "expected `,` or `]`"
                    });
                }
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// A member's key and its colon, inside a skipped object.
    fn key(&mut self) -> Result<(), Error> {
        self.ws();
        if self.peek_byte() != Some(b'"') {
            return self.syntax("expected a key");
        }
        self.pos += 1;
        // Only checked for form, as serde checks the keys of a value it
        // skips (`fields` decodes the keys of the objects it reads).
        self.string(false)?;
        self.expect(b':', "expected `:`")
    }

    fn literal(&mut self, word: &str) -> Result<(), Error> {
        if self.bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            self.syntax("expected value")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek_byte() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), Error> {
        if self.peek_byte() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek_byte() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek_byte() {
                    return self.syntax("invalid number");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.syntax("invalid number"),
        }
        if self.peek_byte() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.syntax("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.peek_byte() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek_byte() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.syntax("invalid number");
            }
        }
        Ok(())
    }

    /// The rest of a string whose opening quote was read. `decode`: escapes
    /// are decoded and must be valid text (lone surrogates are refused, as
    /// serde refuses them for a string it keeps); otherwise only checked
    /// for form, as serde checks a string it skips.
    ///
    /// Most strings have no escape: their end is found eight bytes at a
    /// time, and they are borrowed. The rest go the byte-by-byte way.
    #[inline]
    fn string(&mut self, decode: bool) -> Result<Cow<'a, str>, Error> {
        let b = self.bytes();
        let start = self.pos;
        let mut at = start;
        while let Some(chunk) = b.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let special = special_bytes(word);
            if special != 0 {
                at += (special.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        while let Some(&c) = b.get(at) {
            if c == b'"' {
                self.pos = at + 1;
                return Ok(Cow::Borrowed(&self.text[start..at]));
            }
            if c == b'\\' || c < 0x20 {
                break;
            }
            at += 1;
        }
        self.pos = at;
        self.string_slow(start, decode)
    }

    /// `string` from its first escape, control character or end of input.
    #[cold]
    fn string_slow(&mut self, start: usize, decode: bool) -> Result<Cow<'a, str>, Error> {
        let b = self.bytes();
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            let Some(&c) = b.get(self.pos) else {
                return self.syntax("unterminated string");
            };
            match c {
                b'"' => {
                    let tail = &self.text[run..self.pos];
                    self.pos += 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                    });
                }
                b'\\' => {
                    if decode {
                        owned
                            .get_or_insert_with(String::new)
                            .push_str(&self.text[run..self.pos]);
                    }
                    self.pos += 1;
                    let Some(&e) = b.get(self.pos) else {
                        return self.syntax("unterminated string");
                    };
                    self.pos += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = self.hex4()?;
                            if !decode {
                                '\0'
                            } else if (0xD800..0xDC00).contains(&unit) {
                                if !b[self.pos..].starts_with(b"\\u") {
                                    return self.syntax("lone leading surrogate in hex escape");
                                }
                                self.pos += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return self.syntax("lone leading surrogate in hex escape");
                                }
                                let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                                char::from_u32(code).expect("a surrogate pair is a char")
                            } else {
                                match char::from_u32(unit) {
                                    Some(ch) => ch,
                                    None => {
                                        return self
                                            .syntax("lone trailing surrogate in hex escape");
                                    }
                                }
                            }
                        }
                        _ => return self.syntax("invalid escape"),
                    };
                    if let Some(s) = owned.as_mut() {
                        s.push(ch);
                    }
                    run = self.pos;
                }
                0..=0x1f => {
                    return self.syntax("control character in string");
                }
                _ => self.pos += 1,
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let Some(digits) = self.bytes().get(self.pos..self.pos + 4) else {
            self.pos = self.text.len();
            return self.syntax("unterminated hex escape");
        };
        let mut v = 0;
        for &d in digits {
            let n = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.syntax("invalid escape"),
            };
            v = v * 16 + u32::from(n);
            self.pos += 1;
        }
        Ok(v)
    }
}

/// A word with the high bit set in each byte that is `"`, `\\` or a
/// control character (below 0x20), and possibly in bytes after the first
/// such one (borrows ripple upwards), never before it: the lowest set bit
/// marks the first special byte.
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
}
