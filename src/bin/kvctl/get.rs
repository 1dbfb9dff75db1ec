//! `kvctl get`: print a value.

use std::io::Write;
use std::path::Path;

use crate::{open_for_reading, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Print the value of KEY (raw bytes) to standard output; exit 1 if absent.
///
/// Example: kvctl --db data.kv get greeting
#[derive(clap::Args)]
pub struct Args {
    /// The key (UTF-8).
    key: String,
}

pub fn run(db: &Path, a: Args) -> Outcome {
    let store = open_for_reading(db)?;
    let snap = store.begin_read()?;
    match snap.get(a.key.as_bytes())? {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`kvctl get k | head -c1`) is not an error worth a message.
            let _ = out.write_all(v).and_then(|()| out.flush());
            Ok(EXIT_OK)
        }
        None => {
            eprintln!("kvctl: key not found: {}", a.key);
            Ok(EXIT_NOT_FOUND)
        }
    }
}
