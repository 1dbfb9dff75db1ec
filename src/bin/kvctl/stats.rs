//! `kvctl stats`: what the store holds.

use std::path::Path;

use crate::{open_for_reading, Outcome, EXIT_OK};

/// Print the store's counters: keys, bytes, index load.
///
/// Example: kvctl --db data.kv stats
#[derive(clap::Args)]
pub struct Args {}

pub fn run(db: &Path, _: Args) -> Outcome {
    let store = open_for_reading(db)?;
    let s = store.stats()?;
    println!("commit          {}", s.seq);
    println!("keys            {}", s.keys);
    println!("live bytes      {}", s.live_bytes);
    println!("log bytes       {}", s.log_bytes);
    println!("dead bytes      {}", s.dead_bytes);
    println!("file bytes      {}", s.file_bytes);
    println!("space amp       {:.2}", s.space_amplification);
    println!("index slots     {}", s.index_slots);
    println!("index used      {}", s.index_used);
    println!("index load      {:.3}", s.index_load);
    Ok(EXIT_OK)
}
