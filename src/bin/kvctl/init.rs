//! `kvctl init`: create an empty store.

use crate::{Ctx, Outcome, EXIT_OK};

/// Create an empty store (or open an existing one and leave it as it is).
///
/// Example: kvctl --db data.kv init
#[derive(clap::Args)]
pub struct Args {}

pub fn run(ctx: &Ctx, _: Args) -> Outcome {
    ctx.open_for_writing(true)?.close()?;
    Ok(EXIT_OK)
}
