//! `kvctl stats`: what the store holds.

use serde_json::json;

use crate::{open_for_reading, Ctx, Outcome, EXIT_OK};

/// Print the store's counters: keys, bytes, index load, open snapshots.
///
/// Examples:
///   kvctl --db data.kv stats
///   kvctl --db data.kv --json stats | jq .keys
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(ctx: &Ctx, _: Args) -> Outcome {
    let store = open_for_reading(&ctx.db)?;
    let s = store.stats()?;
    if ctx.json {
        let v = json!({
            "seq": s.seq,
            "keys": s.keys,
            "live_bytes": s.live_bytes,
            "log_bytes": s.log_bytes,
            "dead_bytes": s.dead_bytes,
            "file_bytes": s.file_bytes,
            "space_amplification": s.space_amplification,
            "index_slots": s.index_slots,
            "index_used": s.index_used,
            "index_load": s.index_load,
            "open_snapshots": s.open_snapshots,
            "oldest_snapshot": s.oldest_snapshot,
            "unregistered_readers": s.unregistered_readers,
        });
        println!("{v}");
        return Ok(EXIT_OK);
    }
    println!("commit            {}", s.seq);
    println!("keys              {}", s.keys);
    println!("live bytes        {}", s.live_bytes);
    println!("log bytes         {}", s.log_bytes);
    println!("dead bytes        {}", s.dead_bytes);
    println!("file bytes        {}", s.file_bytes);
    println!("space amp         {:.2}", s.space_amplification);
    println!("index slots       {}", s.index_slots);
    println!("index used        {}", s.index_used);
    println!("index load        {:.3}", s.index_load);
    // Our own handle is not reading: the snapshots are other processes'.
    println!("open snapshots    {}", s.open_snapshots);
    match s.oldest_snapshot {
        Some(seq) => println!("oldest snapshot   {seq}"),
        None => println!("oldest snapshot   -"),
    }
    if s.unregistered_readers {
        println!("unregistered readers: yes (space cannot be reused while they are open)");
    }
    Ok(EXIT_OK)
}
