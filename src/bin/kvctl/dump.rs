//! `kvctl dump`: every key and value of one snapshot, as text.

use std::io::Write;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::codec::put_bytes;
use crate::mdb::{self, Form};
use crate::{io_fail, Ctx, Outcome, EXIT_OK};

/// Write every key and value of one snapshot, in key order.
///
/// jsonl (default): one {"key":…,"value":…} object per line, with
/// key_base64/value_base64 for bytes that are not UTF-8 — lossless, and
/// read back by `kvctl load`. mdb: the text format of LMDB's mdb_dump
/// (hex values; --print for its -p printable form), read by mdb_load and
/// `kvctl load --format mdb`.
///
/// Examples:
///   kvctl --db data.kv dump --out backup.jsonl
///   kvctl --db data.kv dump --format mdb | mdb_load -n -f /dev/stdin new.lmdb
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// With --format mdb: the printable form (mdb_dump -p).
    #[arg(long)]
    print: bool,
    /// Write here instead of standard output.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// Dump and load formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// LMDB's mdb_dump text format.
    Mdb,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let store = ctx.open_for_reading()?;
    let snap = store.begin_read()?;
    let entries = crate::list::sorted_entries(&snap, &[])?;
    let (mut w, name): (Box<dyn Write>, String) = match &a.out {
        Some(p) => (
            Box::new(std::fs::File::create(p).map_err(|e| io_fail(&p.display().to_string(), e))?),
            p.display().to_string(),
        ),
        None => (Box::new(std::io::stdout().lock()), "standard output".into()),
    };
    let mut w = std::io::BufWriter::new(&mut w);
    let bar = crate::progress(entries.len() as u64, "dump");
    let form = if a.print {
        Form::Print
    } else {
        Form::ByteValue
    };
    let result = (|| -> std::io::Result<()> {
        if a.format == Format::Mdb {
            w.write_all(mdb::header(form).as_bytes())?;
        }
        for (k, v) in &entries {
            match a.format {
                Format::Jsonl => {
                    let mut obj = Map::new();
                    put_bytes(&mut obj, "key", k);
                    put_bytes(&mut obj, "value", v);
                    writeln!(w, "{}", Value::Object(obj))?;
                }
                Format::Mdb => {
                    writeln!(w, "{}", mdb::line(form, k))?;
                    writeln!(w, "{}", mdb::line(form, v))?;
                }
            }
            bar.inc(1);
        }
        if a.format == Format::Mdb {
            w.write_all(mdb::TRAILER.as_bytes())?;
        }
        w.flush()
    })();
    bar.finish_and_clear();
    result.map_err(|e| io_fail(&format!("write the dump to {name}"), e))?;
    eprintln!(
        "kvctl: dumped {} keys at commit {}",
        entries.len(),
        snap.seq()
    );
    Ok(EXIT_OK)
}
