//! Flushes per durable commit on the simulated disk, in steady state.
//! `cargo run --release --example flush_count`
use mapkv::{sim::SimDisk, Options};

fn main() -> mapkv::Result<()> {
    let disk = SimDisk::new(1 << 30);
    let store = Options::new().open_sim(&disk)?;
    let mut hist = [0u64; 4];
    for i in 0..10_000u32 {
        let before = disk.flush_count();
        let mut tx = store.begin_write()?;
        for j in 0..10u32 {
            tx.put((i * 10 + j).to_le_bytes(), [1u8; 100])?;
        }
        tx.commit()?;
        hist[((disk.flush_count() - before) as usize).min(3)] += 1;
    }
    println!(
        "10,000 Immediate commits of 10 puts: {} with 0 flushes, {} with 1, {} with 2, {} with 3+",
        hist[0], hist[1], hist[2], hist[3]
    );
    Ok(())
}
