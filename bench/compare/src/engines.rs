//! The three engines behind one small interface. Every write is one
//! transaction committed with the engine's default full durability: LMDB
//! syncs on commit (no `NOSYNC` flags), redb uses `Durability::Immediate`
//! (its default), mapkv `Durability::Immediate` (its default).

use std::path::{Path, PathBuf};

use crate::workload::present;

pub type Key = [u8; 16];
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What a benchmark does to a store.
pub trait Engine: Sync + Sized {
    /// Opens the store in `dir`, creating it if missing.
    fn open(dir: &Path) -> Res<Self>;
    /// One durable transaction: for each `i` in `order`, puts `key(i)`
    /// with `value(i)`, or deletes it when `value` is `None`.
    fn write(&self, order: &[u32], value: Option<&dyn Fn(u32) -> Value>) -> Res<()>;
    /// One read transaction: gets `key(i)` for each `i` in `order`.
    /// Returns (keys found, value bytes seen).
    fn read(&self, key: impl Fn(u32) -> Key, order: &[u32]) -> Res<(u64, u64)>;
    /// As [`read`](Self::read), asking for `batch` keys at a time with
    /// one call where the engine has one (mapkv's `get_many`); `None`
    /// where it has not.
    fn read_batched(
        &self,
        _key: impl Fn(u32) -> Key,
        _order: &[u32],
        _batch: usize,
    ) -> Res<Option<(u64, u64)>> {
        Ok(None)
    }
    /// One read transaction over every pair: (pairs, key + value bytes).
    fn scan(&self) -> Res<(u64, u64)>;
    /// The files the store consists of (for their sizes).
    fn files(dir: &Path) -> Vec<PathBuf>;
    /// Compacts the store online, beside other threads' transactions;
    /// `false` where the engine cannot (LMDB has no online compaction;
    /// redb's needs the database to itself).
    fn compact(&self) -> Res<bool> {
        Ok(false)
    }
}

pub type Value = [u8; 100];

pub struct Mapkv(mapkv::Store);

impl Engine for Mapkv {
    fn open(dir: &Path) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Mapkv(mapkv::Store::open(dir.join("data.kv"))?))
    }

    fn write(&self, order: &[u32], value: Option<&dyn Fn(u32) -> Value>) -> Res<()> {
        let mut tx = self.0.begin_write()?;
        for &i in order {
            match value {
                Some(v) => tx.put(present(i), v(i))?,
                None => {
                    tx.delete(present(i))?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read(&self, key: impl Fn(u32) -> Key, order: &[u32]) -> Res<(u64, u64)> {
        let snap = self.0.begin_read()?;
        let (mut found, mut bytes) = (0, 0);
        for &i in order {
            if let Some(v) = snap.get(key(i))? {
                found += 1;
                bytes += v.len() as u64;
            }
        }
        Ok((found, bytes))
    }

    fn read_batched(
        &self,
        key: impl Fn(u32) -> Key,
        order: &[u32],
        batch: usize,
    ) -> Res<Option<(u64, u64)>> {
        let snap = self.0.begin_read()?;
        let (mut found, mut bytes) = (0, 0);
        let mut keys = Vec::with_capacity(batch);
        let mut out = Vec::with_capacity(batch);
        for chunk in order.chunks(batch) {
            keys.clear();
            keys.extend(chunk.iter().map(|&i| key(i)));
            snap.get_many_into(&keys, &mut out)?;
            for v in out.iter().flatten() {
                found += 1;
                bytes += v.len() as u64;
            }
        }
        Ok(Some((found, bytes)))
    }

    fn scan(&self) -> Res<(u64, u64)> {
        let snap = self.0.begin_read()?;
        let (mut n, mut bytes) = (0, 0);
        for item in snap.iter() {
            let (k, v) = item?;
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok((n, bytes))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        vec![dir.join("data.kv")]
    }

    fn compact(&self) -> Res<bool> {
        self.0.compact()?;
        Ok(true)
    }
}

type LmdbDb = heed::Database<heed::types::Bytes, heed::types::Bytes>;

pub struct Lmdb {
    env: heed::Env,
    db: LmdbDb,
}

impl Engine for Lmdb {
    fn open(dir: &Path) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        // SAFETY: the directory is ours alone and opened once per process.
        let env = unsafe { heed::EnvOpenOptions::new().map_size(64 << 30).open(dir)? };
        let found: Option<LmdbDb> = {
            let tx = env.read_txn()?;
            env.open_database(&tx, None)?
        };
        let db = match found {
            Some(db) => db,
            None => {
                let mut tx = env.write_txn()?;
                let db = env.create_database(&mut tx, None)?;
                tx.commit()?;
                db
            }
        };
        Ok(Lmdb { env, db })
    }

    fn write(&self, order: &[u32], value: Option<&dyn Fn(u32) -> Value>) -> Res<()> {
        let mut tx = self.env.write_txn()?;
        let db = self.db;
        for &i in order {
            match value {
                Some(v) => db.put(&mut tx, &present(i), &v(i))?,
                None => {
                    db.delete(&mut tx, &present(i))?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read(&self, key: impl Fn(u32) -> Key, order: &[u32]) -> Res<(u64, u64)> {
        let tx = self.env.read_txn()?;
        let db = self.db;
        let (mut found, mut bytes) = (0, 0);
        for &i in order {
            if let Some(v) = db.get(&tx, &key(i))? {
                found += 1;
                bytes += v.len() as u64;
            }
        }
        Ok((found, bytes))
    }

    fn scan(&self) -> Res<(u64, u64)> {
        let tx = self.env.read_txn()?;
        let db = self.db;
        let (mut n, mut bytes) = (0, 0);
        for item in db.iter(&tx)? {
            let (k, v) = item?;
            n += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok((n, bytes))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        vec![dir.join("data.mdb")]
    }
}

pub struct Redb(redb::Database);

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("bench");

impl Engine for Redb {
    fn open(dir: &Path) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let db = redb::Database::create(dir.join("data.redb"))?;
        let fresh = {
            use redb::ReadableDatabase;
            let tx = db.begin_read()?;
            matches!(
                tx.open_table(TABLE),
                Err(redb::TableError::TableDoesNotExist(_))
            )
        };
        if fresh {
            let tx = db.begin_write()?;
            tx.open_table(TABLE)?;
            tx.commit()?;
        }
        Ok(Redb(db))
    }

    fn write(&self, order: &[u32], value: Option<&dyn Fn(u32) -> Value>) -> Res<()> {
        let tx = self.0.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            for &i in order {
                let k: &[u8] = &present(i);
                match value {
                    Some(v) => {
                        t.insert(k, &v(i)[..])?;
                    }
                    None => {
                        t.remove(k)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read(&self, key: impl Fn(u32) -> Key, order: &[u32]) -> Res<(u64, u64)> {
        use redb::ReadableDatabase;
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let (mut found, mut bytes) = (0, 0);
        for &i in order {
            let k: &[u8] = &key(i);
            if let Some(v) = t.get(k)? {
                found += 1;
                bytes += v.value().len() as u64;
            }
        }
        Ok((found, bytes))
    }

    fn scan(&self) -> Res<(u64, u64)> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let (mut n, mut bytes) = (0, 0);
        for item in t.iter()? {
            let (k, v) = item?;
            n += 1;
            bytes += (k.value().len() + v.value().len()) as u64;
        }
        Ok((n, bytes))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        vec![dir.join("data.redb")]
    }
}
