//! CRC-32C (Castagnoli), the checksum of log records (format 5): the SSE
//! 4.2 `crc32` instruction where the CPU has it, the `crc32c` crate
//! elsewhere.
//!
//! Why not CRC-32 (IEEE) as in format 4: every get checks its record's
//! CRC, and a random get's speed depends on how few instructions it runs
//! once its record arrives (only then can the next get's independent slot
//! load overlap this get's misses; docs/DESIGN.md, "Speed"). For a 136-byte
//! record crc32fast's carry-less-multiply folding stepped through ~170
//! instructions in gdb; the loop below ~75, 18 of them `crc32`. On a
//! 1M-key store that took random gets from ~420 ns to ~245. The `crc32c`
//! crate's own x86 code (alignment prologue, three-way split) was no faster
//! than crc32fast in that test, so it only serves CPUs without SSE 4.2.

/// The CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    append(0, data)
}

/// The CRC-32C of the bytes `crc` was computed over followed by `data`.
pub(crate) fn append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: `append_sse42` only needs the CPU to have SSE 4.2, which
        // the line above checked.
        return unsafe { append_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// [`append`] with one `crc32` instruction per 8 bytes, four to a loop
/// turn (one compare and branch per 32 bytes).
///
/// # Safety
/// The CPU must have SSE 4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn append_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or_default());
    // SAFETY: the `crc32` intrinsics only need SSE 4.2, which the caller
    // promises; they read nothing but their arguments. (Rust 1.87 made
    // them safe to call here; the block is for older compilers, back to
    // the crate's minimum, 1.85.)
    #[allow(unused_unsafe)]
    unsafe {
        let mut c = u64::from(!crc);
        let mut quads = data.chunks_exact(32);
        for q in &mut quads {
            for w in q.chunks_exact(8) {
                c = _mm_crc32_u64(c, word(w));
            }
        }
        let mut words = quads.remainder().chunks_exact(8);
        for w in &mut words {
            c = _mm_crc32_u64(c, word(w));
        }
        let mut c = c as u32;
        let mut halves = words.remainder().chunks_exact(4);
        for h in &mut halves {
            c = _mm_crc32_u32(c, u32::from_le_bytes(h.try_into().unwrap_or_default()));
        }
        for &b in halves.remainder() {
            c = _mm_crc32_u8(c, b);
        }
        !c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_check_value() {
        // The CRC-32C of "123456789" (RFC 3720, appendix B.4's catalogue).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn matches_the_portable_crate_at_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 131 + 7) as u8).collect();
        for len in 0..data.len() {
            let d = &data[..len];
            let want = crc32c::crc32c(d);
            assert_eq!(crc32c(d), want, "length {len}");
            for cut in [0, 1, 3, 4, 7, 8, 31, 32, 33] {
                if cut <= len {
                    assert_eq!(
                        append(crc32c(&d[..cut]), &d[cut..]),
                        want,
                        "{len} cut {cut}"
                    );
                }
            }
        }
    }
}
