//! `kvctl del`: remove keys.

use std::path::Path;

use crate::{begin_write, open_existing, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Remove KEYs in one transaction; prints how many existed, exit 1 if none.
///
/// Example: kvctl --db data.kv del greeting farewell
#[derive(clap::Args)]
pub struct Args {
    /// The keys (UTF-8).
    #[arg(required = true)]
    keys: Vec<String>,
}

pub fn run(db: &Path, a: Args, wait: bool) -> Outcome {
    let store = open_existing(db)?;
    let mut tx = begin_write(&store, wait)?;
    let mut existed = 0;
    for k in &a.keys {
        existed += tx.delete(k.as_bytes())? as usize;
    }
    tx.commit()?;
    store.close()?;
    println!("{existed}");
    Ok(if existed == 0 {
        EXIT_NOT_FOUND
    } else {
        EXIT_OK
    })
}
