//! Operations on the simulated disk, a power cut at a chosen flush or
//! between operations, each unflushed sector landing or not as the input
//! says; the reopened store must be exactly some commit k >= the last
//! acknowledged durable one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapkv::check::{power_loss, Cut, Op};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    seed: u8,
    ops: Vec<Op>,
    cut: Cut,
    /// Bit i decides whether dirty sector i lands (repeating).
    land: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if input.ops.len() > 200 {
        return;
    }
    let cut = match input.cut {
        Cut::AtFlush(n) => Cut::AtFlush(n % 64),
        Cut::AfterOp(n) => Cut::AfterOp(n % 200),
    };
    let mut i = 0usize;
    let land = |_off: u64| {
        let bit = match input.land.len() {
            0 => false,
            len => input.land[(i / 8) % len] >> (i % 8) & 1 == 1,
        };
        i += 1;
        bit
    };
    if let Err(e) = power_loss(&input.ops, input.seed as u64, cut, land) {
        panic!("{e}\ninput: {input:?}");
    }
});
