//! `kvctl verify`: check every checksum and structure.

use std::path::Path;

use crate::{open_for_reading, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Check every record, commit and index slot; list each problem with its
/// offset. Exit 0 if sound, 1 if problems were found.
///
/// Example: kvctl --db data.kv verify
#[derive(clap::Args)]
pub struct Args {}

pub fn run(db: &Path, _: Args) -> Outcome {
    let store = open_for_reading(db)?;
    let report = store.verify()?;
    println!("{report}");
    Ok(if report.is_ok() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    })
}
