//! Shared-memory store names for tests.

use std::path::PathBuf;

use mapkv::Store;

/// A shared-memory name unique to this process and test, removed when
/// dropped so a failing test leaves nothing in `/dev/shm`.
pub struct ShmName(pub String);

impl ShmName {
    pub fn new(test: &str) -> ShmName {
        let name = format!("mapkv-test-{}-{test}", std::process::id());
        let _ = Store::unlink_shm(&name);
        ShmName(name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/dev/shm").join(&self.0)
    }
}

impl Drop for ShmName {
    fn drop(&mut self) {
        let _ = Store::unlink_shm(&self.0);
    }
}
