//! How keys and values cross the command line: the encoding chosen with
//! `--hex` / `--base64` (UTF-8 otherwise) for arguments and text output,
//! and the JSON form used by `--json` and `dump --format jsonl`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{Map, Value};

/// The encoding of keys and values on the command line and in text output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 arguments; text output escapes what is not printable UTF-8.
    Utf8,
    Hex,
    Base64,
}

impl Encoding {
    /// Decodes a key or value given as an argument.
    pub fn decode(self, what: &str, arg: &str) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Utf8 => Ok(arg.as_bytes().to_vec()),
            Encoding::Hex => from_hex(arg).ok_or_else(|| format!("{what} is not hex: {arg:?}")),
            Encoding::Base64 => B64
                .decode(arg)
                .map_err(|e| format!("{what} is not base64 ({e}): {arg:?}")),
        }
    }

    /// Encodes bytes for one line of text output (never contains a newline).
    pub fn text(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => escape(bytes),
            Encoding::Hex => to_hex(bytes),
            Encoding::Base64 => B64.encode(bytes),
        }
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Printable UTF-8 as it is; backslash, control characters and invalid
/// bytes escaped (`\\`, `\n`, `\t`, `\r`, `\xNN`), so the result is one
/// line and says exactly which bytes there were.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Adds `name: "text"` when the bytes are UTF-8, else `name_base64: "…"`:
/// readable where it can be, lossless always.
pub fn put_bytes(obj: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => obj.insert(name.to_string(), Value::String(s.to_string())),
        Err(_) => obj.insert(format!("{name}_base64"), Value::String(B64.encode(bytes))),
    };
}

/// Reads back what [`put_bytes`] wrote: `Ok(None)` if neither field is there.
pub fn get_bytes(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    if let Some(v) = obj.get(name) {
        return match v {
            Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
            _ => Err(format!("\"{name}\" is not a string")),
        };
    }
    let b64 = format!("{name}_base64");
    match obj.get(&b64) {
        None => Ok(None),
        Some(Value::String(s)) => B64
            .decode(s)
            .map(Some)
            .map_err(|e| format!("\"{b64}\" is not base64: {e}")),
        Some(_) => Err(format!("\"{b64}\" is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let b = [0u8, 1, 0x7f, 0xff];
        assert_eq!(from_hex(&to_hex(&b)).unwrap(), b);
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn escape_keeps_printable_text_and_marks_every_other_byte() {
        assert_eq!(escape("héllo".as_bytes()), "héllo");
        assert_eq!(escape(b"a\\b\n\x00\xff"), "a\\\\b\\n\\x00\\xff");
    }

    #[test]
    fn json_bytes_are_text_when_they_can_be_and_lossless_always() {
        let mut m = Map::new();
        put_bytes(&mut m, "key", b"plain");
        put_bytes(&mut m, "value", b"\xff\x00");
        assert_eq!(m["key"], "plain");
        assert!(m.contains_key("value_base64"));
        assert_eq!(get_bytes(&m, "key").unwrap().unwrap(), b"plain");
        assert_eq!(get_bytes(&m, "value").unwrap().unwrap(), b"\xff\x00");
        assert_eq!(get_bytes(&m, "other").unwrap(), None);
    }
}
