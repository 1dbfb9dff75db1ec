//! Kill torture: a writer in a child process doing random transactions on a
//! real file (real `mmap`, real `msync`), killed with `SIGKILL` at random
//! moments; after each kill the store is reopened and must show exactly the
//! state after some commit at least as new as the last one the child
//! acknowledged.
//!
//! The child's transactions are a pure function of a seed, and blind (puts
//! and deletes, no reads), so the parent can replay them on a model of the
//! state the child started from. The child reports each commit's sequence
//! number on standard output after `commit()` returns. Now and then it
//! also writes a large value and aborts: nothing of that may ever show.
//!
//! [`child`] is the child's body; [`run`] the parent's, which starts a
//! child per round through a caller-supplied function (a test binary
//! re-executes itself; `kvctl` would run a hidden subcommand).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::{Durability, Options, Store};

/// The keys the child writes (a small space, so overwrites are common).
const KEYS: u64 = 500;

/// A small deterministic generator (SplitMix64): the child and the parent
/// must draw the same transactions from the same seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One write of a transaction: a key and its new value (`None`: delete).
type Write1 = (Vec<u8>, Option<Vec<u8>>);

/// Transaction number `i` of the child started with `seed`.
fn transaction(seed: u64, i: u64) -> (Vec<Write1>, Durability) {
    let mut rng = Rng(seed ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93));
    let n = 1 + rng.below(20);
    let writes = (0..n)
        .map(|_| {
            let key = format!("k{:04}", rng.below(KEYS)).into_bytes();
            if rng.below(5) == 0 {
                return (key, None);
            }
            // Mostly small values; now and then a large one, so the file
            // grows (and is remapped) while the child runs.
            let len = if rng.below(40) == 0 {
                200_000 + rng.below(300_000)
            } else {
                rng.below(300)
            };
            let tag = rng.next().to_le_bytes();
            let value = (0..len as usize).map(|j| tag[j % 8] ^ j as u8).collect();
            (key, Some(value))
        })
        .collect();
    let durability = if rng.below(4) == 0 {
        Durability::Eventual
    } else {
        Durability::Immediate
    };
    (writes, durability)
}

/// The child: opens `db` and commits transactions `0, 1, 2, …` of `seed`
/// until killed, printing `committed SEQ` after each `commit()` returns.
/// An `Eventual` commit is reported too: a process kill loses nothing.
pub fn child(db: &Path, seed: u64) -> crate::Result<()> {
    let store = Store::open(db)?;
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        if i % ABORT_EVERY == ABORT_EVERY - 1 {
            // A transaction that writes a large value (the file often
            // grows for it) and aborts: it publishes nothing, but its
            // bytes stay past the allocated area, where the next writer
            // must not take them for zeros (nor, killed, for a commit).
            let mut tx = store.begin_write()?;
            let len = 100_000 + (Rng(seed ^ i).below(1_400_000) as usize);
            tx.put(b"aborted", vec![0xa5; len])?;
            tx.abort();
        }
        let (writes, durability) = transaction(seed, i);
        let mut tx = store.begin_write()?;
        tx.set_durability(durability);
        for (k, v) in &writes {
            match v {
                Some(v) => tx.put(k, v)?,
                None => {
                    tx.delete(k)?;
                }
            }
        }
        let seq = tx.commit()?;
        let _ = writeln!(out, "committed {i} {seq}");
        let _ = out.flush();
        if i % COMPACT_EVERY == COMPACT_EVERY - 1 {
            // Kills land inside compaction too: its copy commits, the
            // relocation, the checkpoints and (in rounds where the parent
            // holds no handle) the shrink. Its commits change no value.
            store.compact()?;
        }
    }
    Ok(())
}

/// The child runs `Store::compact` after every this many transactions.
const COMPACT_EVERY: u64 = 16;

/// ... and before every this many, a transaction it aborts.
const ABORT_EVERY: u64 = 7;

/// What [`run`] saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Rounds run (each one child killed).
    pub rounds: u64,
    /// Commits the children acknowledged, over all rounds.
    pub acknowledged: u64,
    /// Commits found after reopening that were made but not yet
    /// acknowledged when the child died.
    pub unacknowledged_survivors: u64,
    /// `Store::compact` calls the children began (after every
    /// `COMPACT_EVERY`th acknowledged transaction), so kills landed in or
    /// after compaction.
    pub compactions: u64,
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn snapshot(store: &Store) -> Result<(u64, Model), String> {
    let snap = store.begin_read().map_err(|e| e.to_string())?;
    let mut m = Model::new();
    for item in snap.iter() {
        let (k, v) = item.map_err(|e| e.to_string())?;
        m.insert(k.to_vec(), v.to_vec());
    }
    if m.len() as u64 != snap.len() {
        return Err(format!(
            "iter shows {} keys, len says {}",
            m.len(),
            snap.len()
        ));
    }
    Ok((snap.seq(), m))
}

/// Runs `rounds` rounds on the store at `db`: each starts a child with
/// `spawn(db, seed)` (which must run [`child`] with its stdout piped), kills
/// it after a random delay of up to `max_delay`, reopens and checks. Every
/// other round the parent keeps a handle open across the kill, so both
/// recovery paths run: from the checkpoint (no handle left) and by the next
/// writer (a live handle remains).
pub fn run(
    db: &Path,
    rounds: u64,
    max_delay: Duration,
    seed: u64,
    mut spawn: impl FnMut(&Path, u64) -> std::io::Result<Child>,
) -> Result<Report, String> {
    let mut report = Report::default();
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let keep_open = round % 2 == 1;
        let (seq0, model0) = {
            let store = Options::new()
                .open(db)
                .map_err(|e| format!("round {round}: open: {e}"))?;
            snapshot(&store)?
        };
        let held = if keep_open {
            Some(Store::open(db).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let child_seed = rng.next();
        let mut child = spawn(db, child_seed).map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("child stdout is not piped")?;
        let delay = Duration::from_micros(rng.below(max_delay.as_micros().max(1) as u64));
        // Read acknowledgements on a thread while the delay runs, then kill.
        let reader = std::thread::spawn(move || {
            let mut acked: Option<(u64, u64)> = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // A test harness may print its own words before ours.
                let mut parts = line
                    .split_whitespace()
                    .skip_while(|w| *w != "committed")
                    .skip(1)
                    .map(|p| p.parse::<u64>());
                if let (Some(Ok(i)), Some(Ok(seq))) = (parts.next(), parts.next()) {
                    acked = Some((i, seq));
                }
            }
            acked
        });
        let start = Instant::now();
        while start.elapsed() < delay {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("round {round}: child exited early: {status}"));
            }
            std::thread::sleep(Duration::from_micros(200).min(delay));
        }
        let _ = child.kill();
        let status = child
            .wait()
            .map_err(|e| format!("round {round}: wait: {e}"))?;
        // It never stops by itself: anything but our SIGKILL means it
        // failed (or exited) between the last look and the kill.
        if std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGKILL) {
            return Err(format!("round {round}: child ended by itself: {status}"));
        }
        let acked = reader.join().map_err(|_| "reader thread panicked")?;

        // Reopen (joining `held`'s live state if it is open, else recovering
        // from the checkpoint), then begin a write: that is where a commit
        // the child wrote but did not publish is adopted.
        let store = Options::new()
            .open(db)
            .map_err(|e| format!("round {round}: reopen after kill: {e}"))?;
        store
            .begin_write()
            .and_then(|tx| tx.commit())
            .map_err(|e| format!("round {round}: first write after kill: {e}"))?;
        drop(held);
        let (seq, state) = snapshot(&store)?;
        let min_seq = acked.map_or(seq0, |(_, s)| s);
        if seq < min_seq {
            return Err(format!(
                "round {round}: reopened at commit {seq}, but commit {min_seq} was acknowledged"
            ));
        }
        // The child's compactions take sequence numbers but change no
        // value, so the state is matched against the model after each
        // prefix of its transactions: it must be the one after every
        // acknowledged transaction, or after one more (made, not yet
        // acknowledged).
        let acked_n = acked.map_or(0, |(i, _)| i + 1);
        let mut model = model0;
        let apply = |model: &mut Model, i: u64| {
            for (k, v) in transaction(child_seed, i).0 {
                match v {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
            }
        };
        for i in 0..acked_n {
            apply(&mut model, i);
        }
        let mut survivor = 0;
        if state != model {
            apply(&mut model, acked_n);
            survivor = 1;
            if state != model {
                return Err(format!(
                    "round {round}: reopened at commit {seq} (acknowledged {min_seq}, \
                     transaction {acked_n} of the child), but the data is not the state \
                     after its transaction {acked_n} or {}",
                    acked_n + 1
                ));
            }
        }
        let verify = store.verify().map_err(|e| e.to_string())?;
        if !verify.is_ok() {
            return Err(format!("round {round}: verify after kill: {verify}"));
        }
        report.rounds += 1;
        report.acknowledged += acked_n;
        report.unacknowledged_survivors += survivor;
        report.compactions += acked_n / COMPACT_EVERY;
    }
    Ok(report)
}

/// How a caller builds the child's command: its arguments plus these
/// environment variables, read by [`child_from_env`].
pub const ENV_DB: &str = "MAPKV_TORTURE_DB";
/// See [`ENV_DB`].
pub const ENV_SEED: &str = "MAPKV_TORTURE_SEED";

/// Runs [`child`] with the database and seed from [`ENV_DB`] and
/// [`ENV_SEED`]; `None` if they are not set (not a torture child).
pub fn child_from_env() -> Option<crate::Result<()>> {
    let db = std::env::var_os(ENV_DB)?;
    let seed = std::env::var(ENV_SEED).ok()?.parse().ok()?;
    Some(child(Path::new(&db), seed))
}

/// Sets up `cmd` as a torture child for `db` and `seed` (stdout piped).
pub fn child_command(
    mut cmd: std::process::Command,
    db: &Path,
    seed: u64,
) -> std::process::Command {
    cmd.env(ENV_DB, db)
        .env(ENV_SEED, seed.to_string())
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    cmd
}
