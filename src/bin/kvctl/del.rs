//! `kvctl del`: remove keys.

use crate::{begin_write, Ctx, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Remove KEYs in one transaction; prints how many existed, exit 1 if none.
/// With --dry-run nothing is written: kvctl says what would be deleted.
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
    let store = ctx.open_existing()?;
    let before = ctx.dry_run.then(|| store.stats()).transpose()?;
    let mut tx = begin_write(&store, ctx.wait)?;
    let mut existed = 0;
    let mut tally = crate::dryrun::Tally::default();
    for k in &keys {
        let found = tx.delete(k)?;
        tally.delete(found);
        existed += found as usize;
    }
    tx.commit()?;
    let code = if existed == 0 {
        EXIT_NOT_FOUND
    } else {
        EXIT_OK
    };
    if let Some(before) = before {
        tally.report(ctx, &before, &store.stats()?);
        return Ok(code);
    }
    store.close()?;
    if ctx.json {
        println!("{}", serde_json::json!({ "deleted": existed }));
    } else {
        println!("{existed}");
    }
    Ok(code)
}
