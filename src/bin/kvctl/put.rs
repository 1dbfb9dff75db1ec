//! `kvctl put`: set a key.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{begin_write, open_existing, Outcome, EXIT_OK};

/// Set KEY to VALUE (from the argument, `--file`, or standard input with `-`).
///
/// Example: kvctl --db data.kv put greeting hello
#[derive(clap::Args)]
pub struct Args {
    /// The key (UTF-8).
    key: String,
    /// The value; `-` reads standard input.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    value: Option<String>,
    /// Read the value from this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Create the store if it does not exist.
    #[arg(long)]
    create: bool,
}

pub fn run(db: &Path, a: Args, wait: bool) -> Outcome {
    let value = match (&a.value, &a.file) {
        (_, Some(f)) => std::fs::read(f).map_err(|e| io(f, e))?,
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| io(Path::new("standard input"), e))?;
            buf
        }
        (Some(v), None) => v.clone().into_bytes(),
        (None, None) => unreachable!("clap requires a value or --file"),
    };
    let store = if a.create {
        mapkv::Store::open(db)?
    } else {
        open_existing(db)?
    };
    let mut tx = begin_write(&store, wait)?;
    tx.put(a.key.as_bytes(), &value)?;
    tx.commit()?;
    store.close()?;
    Ok(EXIT_OK)
}

fn io(path: &Path, source: std::io::Error) -> mapkv::Error {
    mapkv::Error::Io {
        path: path.to_path_buf(),
        op: "read the value".into(),
        source,
    }
}
