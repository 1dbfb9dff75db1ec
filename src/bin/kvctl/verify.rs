//! `kvctl verify`: check every checksum and structure.

use serde_json::json;

use crate::{Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Check every record, commit and index slot; list each problem with its
/// offset. Exit 0 if sound, 1 if problems were found.
///
/// Examples:
///   kvctl --db data.kv verify
///   kvctl --db data.kv --json verify
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(ctx: &Ctx, _: Args) -> Outcome {
    let store = ctx.open_for_reading()?;
    // The check reports no progress of its own: a spinner while it runs.
    let bar = crate::progress(0, "verify");
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let report = store.verify();
    bar.finish_and_clear();
    let report = report?;
    if ctx.json {
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| json!({ "offset": p.offset, "what": p.what }))
            .collect();
        let v = json!({
            "ok": report.is_ok(),
            "seq": report.seq,
            "commits": report.commits,
            "records": report.records,
            "keys": report.keys,
            "problems": problems,
        });
        println!("{v}");
    } else {
        println!("{report}");
    }
    Ok(if report.is_ok() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    })
}
