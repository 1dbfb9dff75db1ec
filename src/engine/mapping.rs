//! The current mapping: remapping as the file grows, and the extent table read from it.

use super::meta::pick_meta;
use super::Shared;
use crate::error::Result;
use crate::format::*;
use crate::live::{self, State};
use crate::space::Space;
use crate::storage::Mapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Shared {
    /// A mapping that covers at least `len` bytes, remapping if the file
    /// grew (in this process or another).
    pub(crate) fn map_covering(&self, len: u64) -> Result<Arc<Mapping>> {
        let m = self.map.load_full();
        if m.len() >= len {
            return Ok(m);
        }
        let _g = self.remap.lock().unwrap_or_else(|e| e.into_inner());
        let m = self.map.load_full();
        if m.len() >= len {
            return Ok(m);
        }
        let file_len = self.real_file_len()?;
        if file_len < len {
            return Err(self.corrupted(
                file_len,
                format!("file is {file_len} bytes but the store needs {len}: truncated?"),
            ));
        }
        if m.reserved() >= len {
            // The file grew into the address space already mapped.
            m.extend(file_len);
            return Ok(m);
        }
        let m = Arc::new(
            self.backend
                .map(file_len)
                .map_err(|e| self.io("map the grown file", e))?,
        );
        self.map.store(m.clone());
        Ok(m)
    }

    /// The file's length now (which a writer in another process, perhaps
    /// dead, may have grown past any published state).
    pub(crate) fn real_file_len(&self) -> Result<u64> {
        self.backend
            .file_len()
            .map_err(|e| self.io("read the file length", e))
    }

    /// The extent table published with `st` (in the working copy it
    /// names). Exact under the writer lock; without it, a writer may be
    /// rewriting that copy (two publishes later), so `space_of` checks.
    pub(crate) fn working_space(&self, map: &Mapping, st: &State) -> Result<Space> {
        let at = SPACE_WORKING[(st.space_at & 1) as usize];
        Space::load(map, at, st.space_n, None, st.alloc_end)
            .map_err(|why| self.corrupted(at, format!("live extent table: {why}")))
    }

    /// The newest state and the extent table that goes with it: the
    /// working copy it names, or for a handle showing a checkpoint
    /// (offline), the checkpoint's. Read without the writer lock, so
    /// seqlock style: a writer rewrites a copy only two publishes later.
    pub(crate) fn space_of(&self, map: &Mapping) -> Result<(State, Space)> {
        if !self.joined.load(Ordering::Acquire) && !self.try_join()? {
            let meta = pick_meta(&self.path, map)?;
            return Ok((self.current()?, self.checkpoint_space(map, &meta)?));
        }
        for _ in 0..1000 {
            let gen = live::generation(map);
            let cur = self.current()?;
            let space = self.working_space(map, &cur);
            if live::generation(map) == gen {
                return Ok((cur, space?));
            }
            std::thread::yield_now();
        }
        Err(self.corrupted(LIVE_OFFSET, "live extent table never settles"))
    }
}
