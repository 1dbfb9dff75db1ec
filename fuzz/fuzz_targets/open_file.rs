//! Arbitrary bytes as a store file: open, verify, reads and a write must
//! return Ok or a clean Err, never panic, hang or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() > 8 << 20 {
        return;
    }
    let _ = mapkv::check::open_file(bytes);
});
