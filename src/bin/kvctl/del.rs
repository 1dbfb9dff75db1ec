//! `kvctl del`: remove keys.

use crate::{begin_write, open_existing, Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Remove KEYs in one transaction; prints how many existed, exit 1 if none.
///
/// Example: kvctl --db data.kv del greeting farewell
#[derive(clap::Args)]
pub struct Args {
    /// The keys.
    #[arg(required = true)]
    keys: Vec<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let keys = a
        .keys
        .iter()
        .map(|k| ctx.key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let store = open_existing(&ctx.db)?;
    let mut tx = begin_write(&store, ctx.wait)?;
    let mut existed = 0;
    for k in &keys {
        existed += tx.delete(k)? as usize;
    }
    tx.commit()?;
    store.close()?;
    if ctx.json {
        println!("{}", serde_json::json!({ "deleted": existed }));
    } else {
        println!("{existed}");
    }
    Ok(if existed == 0 {
        EXIT_NOT_FOUND
    } else {
        EXIT_OK
    })
}
