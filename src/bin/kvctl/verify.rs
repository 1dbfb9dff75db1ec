//! `kvctl verify`: check every checksum and structure.

use serde_json::json;

use crate::{open_for_reading, Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

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
    let store = open_for_reading(&ctx.db)?;
    let report = store.verify()?;
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
