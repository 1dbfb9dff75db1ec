//! Flushing: making ranges of the file durable, and poisoning the writer when that fails.

use super::Shared;
use super::Writer;
use crate::error::Result;
use crate::live::State;
use crate::storage::Mapping;

impl Shared {
    /// Flushes a range; a failure poisons the writer (a second flush after
    /// a failed one may "succeed" without the data on disk).
    pub(crate) fn flush(&self, w: &mut Writer, map: &Mapping, off: u64, len: u64) -> Result<()> {
        self.backend.flush(map, off, len).map_err(|e| {
            w.poisoned = true;
            self.io(format!("flush {len} bytes at offset {off}"), e)
        })
    }

    /// Flushes every committed but unflushed log range, and marks the log
    /// durable up to `st.tail`.
    pub(crate) fn flush_unsynced(
        &self,
        w: &mut Writer,
        map: &Mapping,
        st: &mut State,
        extra: &[(u64, u64)],
    ) -> Result<()> {
        if w.full_flush {
            self.flush(w, map, 0, map.len())?;
        } else {
            let ranges: Vec<(u64, u64)> = w.unsynced.iter().chain(extra).copied().collect();
            for (a, b) in ranges {
                self.flush(w, map, a, b - a)?;
            }
        }
        w.unsynced.clear();
        w.full_flush = false;
        st.synced_tail = st.tail;
        Ok(())
    }

    /// Makes every commit so far durable (those made `Eventual`ly), and
    /// publishes that; nothing to do in the common case.
    pub(crate) fn sync_writer(&self, w: &mut Writer, map: &Mapping) -> Result<()> {
        let mut st = w.state;
        if st.synced_tail == st.tail && !w.full_flush && w.unsynced.is_empty() {
            return Ok(());
        }
        self.flush_unsynced(w, map, &mut st, &[])?;
        self.publish(w, map, &mut st);
        Ok(())
    }
}
