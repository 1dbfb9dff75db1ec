//! Operations against a BTreeMap model, checked after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapkv::check::{run_ops, Op};

fuzz_target!(|input: (u8, Vec<Op>)| {
    let (seed, ops) = input;
    if ops.len() > 400 {
        return;
    }
    if let Err(e) = run_ops(&ops, seed as u64) {
        panic!("{e}\nops: {ops:?}");
    }
});
