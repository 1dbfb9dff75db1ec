//! `kvctl readers`: the snapshots open in every process.

use serde_json::json;

use crate::{Ctx, Outcome, EXIT_OK};

/// List the snapshots open in every process (owner pid, the commit it
/// shows, its age), from the store's reader table. Entries of processes
/// that died are not listed; --clear-stale also clears them (like
/// mdb_stat -rr) and says how many handles' entries it cleared.
///
/// Examples:
///   kvctl --db data.kv readers
///   kvctl --db data.kv readers --clear-stale
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Clear the entries of processes that died.
    #[arg(long)]
    clear_stale: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let store = ctx.open_for_reading()?;
    let cleared = if a.clear_stale {
        Some(store.clear_stale_readers()?)
    } else {
        None
    };
    let mut readers = store.readers()?;
    readers.sort_by_key(|r| (r.seq, r.pid));
    if ctx.json {
        let list: Vec<_> = readers
            .iter()
            .map(|r| json!({ "pid": r.pid, "seq": r.seq, "age_ms": r.age.as_millis() as u64 }))
            .collect();
        let mut v = json!({ "readers": list });
        if let Some(n) = cleared {
            v["cleared"] = n.into();
        }
        println!("{v}");
        return Ok(EXIT_OK);
    }
    if let Some(n) = cleared {
        println!("cleared the entries of {n} dead handle(s)");
    }
    println!("{:>8}  {:>12}  {:>10}", "pid", "seq", "age");
    for r in &readers {
        println!("{:>8}  {:>12}  {:>9.1}s", r.pid, r.seq, r.age.as_secs_f64());
    }
    Ok(EXIT_OK)
}
