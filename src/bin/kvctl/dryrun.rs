//! `--dry-run`: what put, del and load would change, counted while they
//! work in a private view (`Options::private`), and reported.

use serde_json::json;

use crate::Ctx;

/// What a dry run's transactions did, key by key.
#[derive(Default)]
pub struct Tally {
    added: u64,
    changed: u64,
    unchanged: u64,
    deleted: u64,
    absent: u64,
    /// Key and value bytes of what would be written.
    bytes_put: u64,
}

impl Tally {
    /// Counts a put of `key` in `tx` (before it is made).
    pub fn put(&mut self, tx: &mapkv::WriteTxn<'_>, key: &[u8], value: &[u8]) -> mapkv::Result<()> {
        match tx.get(key)? {
            None => self.added += 1,
            Some(old) if old == value => self.unchanged += 1,
            Some(_) => self.changed += 1,
        }
        self.bytes_put += (key.len() + value.len()) as u64;
        Ok(())
    }

    /// Counts a delete that found the key (`existed`) or not.
    pub fn delete(&mut self, existed: bool) {
        if existed {
            self.deleted += 1;
        } else {
            self.absent += 1;
        }
    }

    /// Prints what would change: keys, and the live bytes before and after.
    pub fn report(&self, ctx: &Ctx, before: &mapkv::Stats, after: &mapkv::Stats) {
        if ctx.json {
            let v = json!({
                "dry_run": true,
                "added": self.added,
                "changed": self.changed,
                "unchanged": self.unchanged,
                "deleted": self.deleted,
                "absent": self.absent,
                "bytes_put": self.bytes_put,
                "keys_before": before.keys,
                "keys_after": after.keys,
                "live_bytes_before": before.live_bytes,
                "live_bytes_after": after.live_bytes,
            });
            println!("{v}");
        } else {
            println!(
                "dry run, nothing written: would add {} keys, change {}, delete {} \
                 ({} unchanged, {} to delete not there); {} bytes of keys and values put; \
                 keys {} -> {}, live bytes {} -> {}",
                self.added,
                self.changed,
                self.deleted,
                self.unchanged,
                self.absent,
                self.bytes_put,
                before.keys,
                after.keys,
                before.live_bytes,
                after.live_bytes
            );
        }
    }
}
