//! `kvctl salvage`: copy what can be trusted out of a damaged store.

use std::path::PathBuf;

use serde_json::json;

use crate::codec::escape;
use crate::{Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Copy every committed key whose newest version reads intact into a new
/// store, and report what was lost. The damaged store is only read: every
/// multiple of 4 in its log area is tried as a record, so a store whose
/// meta pages or index are ruined still gives up its data. Exit 0 if
/// nothing was found lost, 1 if commits were lost or records damaged.
///
/// Example: kvctl --db broken.kv salvage -o rescued.kv
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The new store (must not exist).
    #[arg(short, long)]
    out: PathBuf,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let r = mapkv::salvage(&ctx.db, &a.out)?;
    let clean = r.lost_commits.is_empty() && r.damaged_records == 0;
    if ctx.json {
        let stale: Vec<_> = r.keys_maybe_stale.iter().map(|k| ctx.enc.text(k)).collect();
        let v = json!({
            "ok": clean,
            "commits": r.commits,
            "newest_seq": r.newest_seq,
            "keys": r.keys,
            "lost_commits": r.lost_commits,
            "damaged_records": r.damaged_records,
            "keys_maybe_stale": stale,
        });
        println!("{v}");
    } else {
        println!(
            "salvaged {} keys from {} complete commits (newest {}) into {}",
            r.keys,
            r.commits,
            r.newest_seq,
            a.out.display()
        );
        for (first, last) in &r.lost_commits {
            if first == last {
                println!("lost: commit {first}");
            } else {
                println!("lost: commits {first} to {last}");
            }
        }
        if r.damaged_records > 0 {
            println!("damaged records (checksum mismatch): {}", r.damaged_records);
        }
        for k in &r.keys_maybe_stale {
            println!("may hold an older value: {}", escape(k));
        }
    }
    Ok(if clean { EXIT_OK } else { EXIT_NOT_FOUND })
}
