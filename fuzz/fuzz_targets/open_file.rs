//! Hostile files: arbitrary bytes, or a real store built from operations
//! and then damaged (bit flips, truncation). Open, verify, reads and a
//! write must return Ok or a clean Err, never panic, hang or read out of
//! bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapkv::check::{damaged_store, open_file, Op};

#[derive(Debug, arbitrary::Arbitrary)]
enum Input {
    Raw(Vec<u8>),
    Damaged {
        seed: u8,
        ops: Vec<Op>,
        flips: Vec<(u32, u8)>,
        truncate: Option<u32>,
    },
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(bytes) => {
            let _ = open_file(&bytes);
        }
        Input::Damaged { seed, ops, flips, truncate } => {
            if ops.len() <= 100 && flips.len() <= 64 {
                let _ = damaged_store(&ops, seed as u64, &flips, truncate);
            }
        }
    }
});
