//! `kvctl stats`: what the store holds.

use serde_json::json;

use crate::{Ctx, Outcome, EXIT_OK};

/// Print the store's counters: keys, bytes, space amplification, index
/// load, segments, the last compaction, open snapshots.
///
/// Examples:
///   kvctl --db data.kv stats
///   kvctl --db data.kv --json stats | jq .keys
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(ctx: &Ctx, _: Args) -> Outcome {
    let store = ctx.open_for_reading()?;
    let s = store.stats()?;
    if ctx.json {
        let v = json!({
            "seq": s.seq,
            "keys": s.keys,
            "live_bytes": s.live_bytes,
            "log_bytes": s.log_bytes,
            "log_extent_bytes": s.log_extent_bytes,
            "dead_bytes": s.dead_bytes,
            "file_bytes": s.file_bytes,
            "allocated_bytes": s.allocated_bytes,
            "space_amplification": s.space_amplification,
            "index_slots": s.index_slots,
            "index_used": s.index_used,
            "index_load": s.index_load,
            "index_moving": s.index_moving,
            "segments_in_use": s.segments_in_use,
            "segments_free": s.segments_free,
            "free_bytes": s.free_bytes,
            "segments_retired": s.segments_retired,
            "retired_bytes": s.retired_bytes,
            "last_compaction": s.last_compaction,
            "reclaimed_total": s.reclaimed_total,
            "moved_total": s.moved_total,
            "history_from": s.history_from,
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
    println!(
        "allocated bytes   {} (disk blocks; free space is given back)",
        s.allocated_bytes
    );
    println!("space amp         {:.2}", s.space_amplification);
    println!("index slots       {}", s.index_slots);
    println!("index used        {}", s.index_used);
    println!("index load        {:.3}", s.index_load);
    if s.index_moving > 0 {
        println!("index moving      {} old slots to go", s.index_moving);
    }
    println!(
        "segments          {} in use, {} free ({} bytes), {} retired ({} bytes, wait for old snapshots)",
        s.segments_in_use, s.segments_free, s.free_bytes, s.segments_retired, s.retired_bytes
    );
    match s.last_compaction {
        Some(seq) => println!(
            "last compaction   commit {seq}; {} bytes reclaimed, {} copied in all",
            s.reclaimed_total, s.moved_total
        ),
        None => println!("last compaction   never"),
    }
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
