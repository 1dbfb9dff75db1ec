//! `kvctl torture`: the crash-consistency self-test, on a scratch store.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Ctx, Fail, Outcome, EXIT_NOT_FOUND, EXIT_OK};

/// Kill a writer at random moments and check what survives.
///
/// Each round starts a writer child (kvctl itself) doing random
/// transactions on a scratch store, kills it with SIGKILL after a random
/// delay, reopens the store and checks that it holds exactly the state
/// after some commit, at least the last one the child acknowledged, and
/// passes verify. Prints a summary; exit 1 on any violation. Does not
/// touch --db: the scratch store is in a new temporary directory (kept
/// with --keep).
///
/// Example: kvctl torture --rounds 100
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Rounds (one child killed per round).
    #[arg(long, default_value_t = 50)]
    rounds: u64,
    /// Longest delay before a kill, in milliseconds.
    #[arg(long, default_value_t = 200)]
    max_delay_ms: u64,
    /// Seed of the random delays and transactions (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the scratch store (its path is printed).
    #[arg(long)]
    keep: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Outcome {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let dir = crate::scratch_dir(&std::env::temp_dir(), &format!("torture-{seed}"))?;
    let db = dir.join("torture.kv");
    let exe = std::env::current_exe().map_err(|e| crate::io_fail("find kvctl itself", e))?;
    let started = Instant::now();
    let result = mapkv::torture::run(
        &db,
        a.rounds,
        Duration::from_millis(a.max_delay_ms.max(1)),
        seed,
        |db, child_seed| {
            mapkv::torture::child_command(std::process::Command::new(&exe), db, child_seed).spawn()
        },
    );
    let elapsed = started.elapsed();
    if a.keep {
        eprintln!("kvctl: scratch store kept at {}", db.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match result {
        Ok(r) => {
            if ctx.json {
                let v = json!({
                    "ok": true, "seed": seed, "rounds": r.rounds,
                    "acknowledged": r.acknowledged,
                    "unacknowledged_survivors": r.unacknowledged_survivors,
                    "compactions": r.compactions,
                    "seconds": elapsed.as_secs_f64(),
                });
                println!("{v}");
            } else {
                println!(
                    "torture: {} rounds, {} acknowledged commits checked, {} unacknowledged \
                     commits survived a kill, {} compactions begun; no violation (seed {seed}, \
                     {:.1}s)",
                    r.rounds,
                    r.acknowledged,
                    r.unacknowledged_survivors,
                    r.compactions,
                    elapsed.as_secs_f64()
                );
            }
            Ok(EXIT_OK)
        }
        Err(why) if why.starts_with("spawn") => Err(Fail::Other(why)),
        Err(why) => {
            if ctx.json {
                println!("{}", json!({ "ok": false, "seed": seed, "violation": why }));
            }
            eprintln!("kvctl: torture found a violation (seed {seed}): {why}");
            Ok(EXIT_NOT_FOUND)
        }
    }
}
