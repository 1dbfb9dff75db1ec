//! `kvctl inspect`: decode the structure at a file offset.

use serde_json::{json, Map, Value};

use crate::{Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Decode the record or page at OFFSET, with its checksum status: a meta
/// page (0, 4096), the live header (8192), a reader-table chunk (12288 up
/// to 65536), an extent-table entry (65536 up to 327680), or a log record
/// (from 524288; the offset is rounded down to a multiple of 4, where
/// records start). Reads the file directly, so it works on a store too
/// damaged to open. Exit 1 if the structure fails its checks. Offsets come
/// from `verify`'s problem list, or a record's `prev` and `next record`
/// fields.
///
/// Examples:
///   kvctl --db data.kv inspect 0
///   kvctl --db data.kv inspect 524288
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// File offset in bytes (decimal, or hex with 0x).
    #[arg(value_parser = parse_offset)]
    offset: u64,
}

fn parse_offset(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("not an offset: {e}"))
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let i = mapkv::inspect(&ctx.db, a.offset)?;
    if ctx.json {
        let fields: Map<String, Value> = i
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        println!(
            "{}",
            json!({ "offset": i.offset, "what": i.what, "ok": i.ok, "fields": fields })
        );
    } else {
        print!("{i}");
    }
    Ok(if i.ok { EXIT_OK } else { EXIT_NOT_FOUND })
}
