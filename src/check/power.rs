//! Power cuts: at a flush or between operations, each unflushed sector
//! landing or not (or as an in-between version), then recovery checked
//! against the model.

use super::drive::drive;
use super::{check_view, fresh_disk, key_of, History, Model, Op};
use crate::sim::{CrashPoint, SimDisk};
use crate::Options;

/// Where a power cut happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Cut {
    /// While flush number `n` (counting from 0) is in progress: any subset
    /// of everything written since the previous flush may be on disk.
    AtFlush(u64),
    /// Right after operation `n` (counting from 0), if no transaction is
    /// open then; otherwise the cut is not reached.
    AfterOp(u64),
}

/// Outcome of one [`power_loss`] run, for coverage accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Whether the cut point was reached.
    pub reached: bool,
    /// Sectors that differed between the live and durable images.
    pub dirty_sectors: usize,
    /// Versions of unflushed sectors older than the live one
    /// ([`power_loss_versions`]; 0 otherwise).
    pub between_versions: usize,
    /// Commit the store recovered to.
    pub recovered_seq: u64,
    /// The lowest commit it was allowed to recover to.
    pub min_seq: u64,
}

/// Runs `ops`, cuts power at `cut`, lands each dirty sector where
/// `land(sector_offset)` says so, reopens and checks promise 3: the store
/// opens, shows exactly the model after some commit `k ≥ min_seq`, passes
/// `verify`, and accepts a new commit.
pub fn power_loss(
    ops: &[Op],
    hash_seed: u64,
    cut: Cut,
    land: impl FnMut(u64) -> bool,
) -> Result<CutReport, String> {
    cut_and_check(ops, hash_seed, cut, false, |p| p.image(land))
}

/// [`power_loss`] on a disk that keeps every version a dirty sector had
/// since its last flush ([`SimDisk::track_versions`]): each sector lands
/// as the version `pick(sector_offset, n)` chooses (see
/// [`CrashPoint::image_versions`]), so a sector may hold a state between
/// its durable and its latest contents — an index slot as one `Eventual`
/// commit left it, overwritten by a later one that never reached the disk.
pub fn power_loss_versions(
    ops: &[Op],
    hash_seed: u64,
    cut: Cut,
    pick: impl FnMut(u64, usize) -> usize,
) -> Result<CutReport, String> {
    cut_and_check(ops, hash_seed, cut, true, |p| p.image_versions(pick))
}

fn cut_and_check(
    ops: &[Op],
    hash_seed: u64,
    cut: Cut,
    track: bool,
    image: impl FnOnce(&CrashPoint) -> Vec<u8>,
) -> Result<CutReport, String> {
    let disk = fresh_disk(hash_seed);
    if track {
        disk.track_versions();
    }
    let mut history = History::new();
    if let Cut::AtFlush(n) = cut {
        disk.cut_at_flush(n);
    }
    let mut boundary: Option<(CrashPoint, u64)> = None;
    drive(ops, &disk, &mut history, false, |d, h, step| {
        if cut == Cut::AfterOp(step as u64) {
            boundary = Some((d.crash_point(), last_durable(h)));
        }
    })?;
    let (point, min_seq) = match cut {
        Cut::AtFlush(n) => match disk.take_cut() {
            Some(p) => (p, history.min_seq_before_flush(n)),
            None => return Ok(CutReport::default()),
        },
        Cut::AfterOp(_) => match boundary {
            Some(b) => b,
            None => return Ok(CutReport::default()),
        },
    };
    let dirty_sectors = point.dirty_sectors().len();
    let between = point.versions.values().map(Vec::len).sum();
    let image = image(&point);
    // A cut during a flush that failed may find that commit complete.
    let in_flight = match cut {
        Cut::AtFlush(n) => history
            .failed
            .iter()
            .find(|(flushes, _, _)| flushes.contains(&n))
            .map(|(_, seq, m)| (*seq, m)),
        Cut::AfterOp(_) => None,
    };
    let recovered_seq = check_recovered(&image, &history, min_seq, in_flight)?;
    Ok(CutReport {
        reached: true,
        dirty_sectors,
        between_versions: between,
        recovered_seq,
        min_seq,
    })
}

fn last_durable(h: &History) -> u64 {
    h.durable.iter().map(|(_, s)| *s).max().unwrap_or(0)
}

fn check_recovered(
    image: &[u8],
    history: &History,
    min_seq: u64,
    in_flight: Option<(u64, &Model)>,
) -> Result<u64, String> {
    let disk = SimDisk::from_image(image, 1 << 30);
    let store = Options::new()
        .open_sim(&disk)
        .map_err(|e| format!("open after power cut: {e}"))?;
    let snap = store.begin_read().map_err(|e| e.to_string())?;
    let seq = snap.seq();
    let flying = in_flight.filter(|&(s, m)| s == seq && check_view(&snap, m).is_ok());
    let Some(model) = flying
        .map(|(_, m)| m)
        .or_else(|| history.states.get(seq as usize))
    else {
        return Err(format!(
            "recovered seq {seq}, but only {} commits happened",
            history.states.len() - 1
        ));
    };
    if seq < min_seq {
        return Err(format!(
            "recovered to commit {seq}, but commit {min_seq} was acknowledged durable"
        ));
    }
    check_view(&snap, model).map_err(|e| format!("recovered commit {seq}: {e}"))?;
    drop(snap);
    let report = store.verify().map_err(|e| e.to_string())?;
    if !report.is_ok() {
        return Err(format!("verify after power cut (commit {seq}): {report}"));
    }
    let key = key_of(0);
    store
        .put(&key, b"after")
        .map_err(|e| format!("write after recovery: {e}"))?;
    if store.get(&key).map_err(|e| e.to_string())?.as_deref() != Some(&b"after"[..]) {
        return Err("write after recovery is not visible".into());
    }
    Ok(seq)
}

/// Total flushes `ops` cause on a fresh simulated disk (for enumerating
/// every [`Cut::AtFlush`]).
pub fn count_flushes(ops: &[Op], hash_seed: u64) -> Result<u64, String> {
    let disk = fresh_disk(hash_seed);
    let mut history = History::new();
    drive(ops, &disk, &mut history, false, |_, _, _| {})?;
    Ok(disk.flush_count())
}
