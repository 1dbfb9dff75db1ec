//! Code that exists for the CPU's sake (with `storage`, `sys` and `sim`,
//! the only modules with `unsafe`): CRC-32C through the `crc32`
//! instruction, and a copy of a short key that a get's wide loads can
//! take from the store buffer.
//!
//! Both serve random gets that overlap. A get waits on two cache misses
//! (slot, then record), and the next get's slot load, which does not
//! depend on this get, starts early only if nothing in between holds it
//! back (docs/DESIGN.md, "Speed").
//!
//! **CRC-32C** is the checksum of log records since format 5: the SSE 4.2
//! `crc32` instruction where the CPU has it, the `crc32c` crate elsewhere.
//! Every get checks its record's CRC, and the fewer instructions it runs
//! once its record arrives, the sooner the next get's slot load starts.
//! For a 136-byte record crc32fast's CRC-32 (format 4) stepped through
//! ~170 instructions in gdb; the loop below ~75, 18 of them `crc32`. On a
//! 1M-key store that took random gets from ~420 ns to ~245. The `crc32c`
//! crate's own x86 code (alignment prologue, three-way split) was no faster
//! than crc32fast in that test, so it only serves CPUs without SSE 4.2.
//!
//! **The key copy**: see [`short_key_copy`].

/// The CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// The CRC-32C of the bytes `crc` was computed over followed by `data`.
pub(crate) fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: `append_sse42` only needs the CPU to have SSE 4.2, which
        // the line above checked.
        return unsafe { append_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// [`crc32c_append`] with one `crc32` instruction per 8 bytes, four to a loop
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

/// Keys up to this long are copied by [`short_key_copy`].
pub(crate) const SHORT_KEY: usize = 16;

/// `key` (at most [`SHORT_KEY`] bytes) read a byte at a time and written
/// to a buffer with one 16-byte store, zeros after it.
///
/// A caller often makes its key just before the get: digits written one
/// by one, a `format!`, pieces copied together. The hash then loads the
/// key 8 bytes at a time, and a load that spans several earlier, narrower
/// stores cannot take its bytes from them: it waits until they reach the
/// cache, that is until everything before them has retired — the previous
/// get and its cache misses included. Every get then waits for the one
/// before. A one-byte load is always served by the store that wrote its
/// byte (the loads are volatile so that the compiler does not merge them
/// back into wide ones), and every later load of the copy lies inside its
/// one store.
///
/// Random gets on a 1M-key store, keys made with 16 byte stores (as
/// `mapkv-compare` once made them): 471-488 ns without the copy, 233-247
/// with it. Keys made in a register: 224-240 without, 240-256 with (~80
/// instructions for a 16-byte key).
#[inline]
pub(crate) fn short_key_copy(key: &[u8]) -> [u8; SHORT_KEY] {
    let mut half = [0u64; 2];
    for (i, b) in key.iter().take(SHORT_KEY).enumerate() {
        // SAFETY: `b` is a shared reference to an initialised byte.
        let v = unsafe { std::ptr::read_volatile(b) };
        half[i / 8] |= u64::from(v) << (8 * (i % 8));
    }
    let mut out = [0u8; SHORT_KEY];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86_64; `out` is 16 writable bytes, and
    // `_mm_storeu_si128` needs no alignment.
    unsafe {
        use std::arch::x86_64::{__m128i, _mm_set_epi64x, _mm_storeu_si128};
        let v = _mm_set_epi64x(half[1] as i64, half[0] as i64);
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, v);
    }
    // Elsewhere, two 8-byte stores: not measured there.
    #[cfg(not(target_arch = "x86_64"))]
    {
        out[..8].copy_from_slice(&half[0].to_le_bytes());
        out[8..].copy_from_slice(&half[1].to_le_bytes());
    }
    out
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
                        crc32c_append(crc32c(&d[..cut]), &d[cut..]),
                        want,
                        "{len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_short_key_copy_holds_the_key_and_zeros_after_it() {
        for len in 0..=SHORT_KEY {
            let key: Vec<u8> = (1..=len as u8).map(|b| b.wrapping_mul(37)).collect();
            let copy = short_key_copy(&key);
            assert_eq!(&copy[..len], &key[..], "length {len}");
            assert!(copy[len..].iter().all(|&b| b == 0), "length {len}");
        }
    }
}
