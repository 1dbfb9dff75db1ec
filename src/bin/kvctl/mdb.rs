//! The text format of LMDB's `mdb_dump` / `mdb_load`, for migrating.
//!
//! ```text
//! VERSION=3
//! format=bytevalue        (or "print", from mdb_dump -p)
//! type=btree
//! HEADER=END
//!  6b6579                 (a key: one space, then hex; or printable text
//!  76616c7565              with other bytes as \xx in the print form)
//! DATA=END
//! ```
//!
//! Only the main, unnamed database is read: a section with `database=NAME`
//! (from `mdb_dump -s` or `-a`) and sorted-duplicate databases
//! (`duplicates=1`) are refused with a message saying so. `mapsize`,
//! `maxreaders`, `db_pagesize` and `type` are accepted and ignored; so are
//! the key flags (`integerkey`, `reversekey`): they change LMDB's order,
//! not the bytes.

use std::io::BufRead;

use crate::codec::{from_hex, to_hex};

/// How values are written in the data lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Hex pairs (mdb_dump's default).
    ByteValue,
    /// Printable ASCII as is, `\xx` for other bytes and for the backslash
    /// (mdb_dump -p; mdb_load also reads `\\` as a backslash).
    Print,
}

/// The header of a dump of the main database.
pub fn header(form: Form) -> String {
    let f = match form {
        Form::ByteValue => "bytevalue",
        Form::Print => "print",
    };
    format!("VERSION=3\nformat={f}\ntype=btree\nHEADER=END\n")
}

pub const TRAILER: &str = "DATA=END\n";

/// One data line: a space, then the bytes in `form`.
pub fn line(form: Form, bytes: &[u8]) -> String {
    let mut s = String::with_capacity(1 + bytes.len() * 2);
    s.push(' ');
    match form {
        Form::ByteValue => s.push_str(&to_hex(bytes)),
        Form::Print => {
            for &b in bytes {
                // As mdb_dump -p: a backslash too is written as \5c.
                match b {
                    0x20..=0x7e if b != b'\\' => s.push(b as char),
                    _ => s.push_str(&format!("\\{b:02x}")),
                }
            }
        }
    }
    s
}

fn decode_print(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        }
    }
    Some(out)
}

/// Reads an `mdb_dump` stream, handing each (key, value) to `each`.
/// Errors name the line.
pub fn read(
    input: impl BufRead,
    mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    let mut lines = input.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut next = move || -> Result<Option<(usize, String)>, String> {
        match lines.next() {
            None => Ok(None),
            Some((n, Ok(l))) => Ok(Some((n, l))),
            Some((n, Err(e))) => Err(format!("line {n}: {e}")),
        }
    };
    let mut sections = 0;
    while let Some((n, first)) = next()? {
        if first.is_empty() {
            continue;
        }
        if first != "VERSION=3" {
            return Err(format!(
                "line {n}: expected VERSION=3 (an mdb_dump header), found {first:?}"
            ));
        }
        sections += 1;
        // Header.
        let mut form = Form::ByteValue;
        loop {
            let Some((n, l)) = next()? else {
                return Err("input ends inside a header".into());
            };
            if l == "HEADER=END" {
                break;
            }
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            match k {
                "format" => {
                    form = match v {
                        "bytevalue" => Form::ByteValue,
                        "print" => Form::Print,
                        _ => return Err(format!("line {n}: unknown format {v:?}")),
                    }
                }
                "database" => {
                    return Err(format!(
                        "line {n}: named database {v:?}: only LMDB's main (unnamed) database can be loaded"
                    ))
                }
                "duplicates" | "dupsort" | "dupfixed" | "integerdup" | "reversedup" if v == "1" => {
                    return Err(format!(
                        "line {n}: sorted-duplicate databases ({k}) are not supported: a mapkv key has one value"
                    ))
                }
                "type" if v != "btree" => {
                    return Err(format!("line {n}: unknown database type {v:?}"))
                }
                "type" | "mapsize" | "maxreaders" | "db_pagesize" | "integerkey"
                | "reversekey" | "duplicates" | "dupsort" | "dupfixed" | "integerdup"
                | "reversedup" | "mapaddr" => {}
                _ => return Err(format!("line {n}: unknown header line {l:?}")),
            }
        }
        // Data: key line, value line, ... DATA=END.
        loop {
            let Some((n, key)) = next()? else {
                return Err("input ends before DATA=END".into());
            };
            if key == "DATA=END" {
                break;
            }
            let Some((m, value)) = next()? else {
                return Err(format!(
                    "line {n}: a key without a value at the end of the input"
                ));
            };
            let k = decode(form, n, &key)?;
            let v = decode(form, m, &value)?;
            each(k, v)?;
        }
    }
    if sections == 0 {
        return Err("no mdb_dump data in the input".into());
    }
    Ok(())
}

fn decode(form: Form, n: usize, l: &str) -> Result<Vec<u8>, String> {
    let Some(body) = l.strip_prefix(' ') else {
        return Err(format!("line {n}: a data line must start with one space"));
    };
    let bytes = match form {
        Form::ByteValue => from_hex(body),
        Form::Print => decode_print(body),
    };
    bytes.ok_or_else(|| format!("line {n}: bad {form:?} data {body:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_round_trip_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for form in [Form::ByteValue, Form::Print] {
            let mut text = header(form);
            text.push_str(&line(form, b"k\\ey"));
            text.push('\n');
            text.push_str(&line(form, &all));
            text.push('\n');
            text.push_str(TRAILER);
            let mut got = Vec::new();
            read(text.as_bytes(), |k, v| {
                got.push((k, v));
                Ok(())
            })
            .unwrap();
            assert_eq!(got, vec![(b"k\\ey".to_vec(), all.clone())], "{form:?}");
        }
    }

    #[test]
    fn named_and_duplicate_databases_are_refused_by_name() {
        let named = "VERSION=3\nformat=print\ndatabase=users\ntype=btree\nHEADER=END\nDATA=END\n";
        let e = read(named.as_bytes(), |_, _| Ok(())).unwrap_err();
        assert!(e.contains("named database \"users\""), "{e}");
        let dup = "VERSION=3\nformat=print\nduplicates=1\nHEADER=END\nDATA=END\n";
        let e = read(dup.as_bytes(), |_, _| Ok(())).unwrap_err();
        assert!(e.contains("sorted-duplicate"), "{e}");
    }
}
