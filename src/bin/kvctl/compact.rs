//! `kvctl compact`: reclaim the space of overwritten and deleted records.

use serde_json::json;

use crate::{Ctx, Outcome, EXIT_OK};

/// Copy live records out of log extents with dead space, reuse those
/// extents once no snapshot reads them, and — when no other process has the
/// store open — cut free space off the end of the file. Readers and other
/// writers go on meanwhile (compaction commits in steps of 4 MiB). With
/// --dry-run it compacts a private view and reports the file size before
/// and after; the file is not written.
///
/// Examples:
///   kvctl --db data.kv compact
///   kvctl --db data.kv --json compact | jq .bytes_after
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(ctx: &Ctx, _: Args) -> Outcome {
    let store = ctx.open_existing()?;
    let before = store.stats()?;
    let bar = crate::progress(before.dead_bytes.max(before.live_bytes), "compact");
    let r = store.compact_with_progress(|moved| bar.set_position(moved));
    bar.finish_and_clear();
    let r = r?;
    if ctx.json {
        let v = json!({
            "bytes_before": r.bytes_before,
            "bytes_after": r.bytes_after,
            "records_moved": r.records_moved,
            "bytes_moved": r.bytes_moved,
            "deletes_forgotten": r.deletes_forgotten,
            "bytes_retired": r.bytes_retired,
            "bytes_freed": r.bytes_freed,
            "seconds": r.duration.as_secs_f64(),
            "unfinished": r.unfinished,
            "dry_run": ctx.dry_run,
        });
        println!("{v}");
    } else {
        if ctx.dry_run {
            print!("dry run, nothing written: ");
        }
        println!(
            "file {} -> {} bytes; copied {} records ({} bytes), forgot {} deleted keys, retired {} bytes of log, freed {} ({:.2?})",
            r.bytes_before,
            r.bytes_after,
            r.records_moved,
            r.bytes_moved,
            r.deletes_forgotten,
            r.bytes_retired,
            r.bytes_freed,
            r.duration
        );
        if r.bytes_freed < r.bytes_retired {
            println!("(the rest is freed once older snapshots end)");
        }
        if let Some(why) = &r.unfinished {
            eprintln!("kvctl: compaction stopped early: {why}");
        }
    }
    Ok(EXIT_OK)
}
