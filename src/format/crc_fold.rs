//! Extending a CRC-32 by bytes whose own CRC is already known, without reading them again.
//!
//! CRC-32 is linear over GF(2): the CRC of `A || B` is the CRC of `A` multiplied by
//! x^(8·|B|) modulo the CRC polynomial, plus (xor) the CRC of `B`; the initial value and the
//! final inversion cancel out. The writer computes every record's CRC as it writes the record;
//! for a large record, folding that CRC into the segment's running checksum costs one
//! multiplication here instead of a second pass over the record's bytes.

/// The CRC-32 polynomial (IEEE, as `crc32fast` computes it), bit-reflected: the top bit of a
/// value is the coefficient of x^0.
const POLY: u32 = 0xEDB8_8320;

/// `a · b` modulo the polynomial, in the reflected bit order. Branch-free: 32 steps whatever
/// the operands.
const fn mul_mod(a: u32, b: u32) -> u32 {
    let mut product = 0u32;
    let mut b = b;
    let mut i = 0;
    while i < 32 {
        // The coefficient of x^i in `a`.
        let bit = (a >> (31 - i)) & 1;
        product ^= b & 0u32.wrapping_sub(bit);
        // b · x
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    product
}

/// x^(2^k) modulo the polynomial, for every `k` a shift by a `u32` count of bytes needs.
const X_POW2: [u32; 64] = {
    let mut t = [0u32; 64];
    t[0] = 1 << 30; // x^1
    let mut k = 1;
    while k < 64 {
        t[k] = mul_mod(t[k - 1], t[k - 1]);
        k += 1;
    }
    t
};

/// The factor that moves a CRC past `len` bytes: x^(8·len) modulo the polynomial. One
/// multiplication per bit set in `len`.
pub fn shift_past(len: u32) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut bits = len;
    // 8·len = len · 2^3: bit j of `len` stands for x^(2^(j+3)).
    let mut k = 3;
    while bits != 0 {
        if bits & 1 == 1 {
            p = mul_mod(X_POW2[k], p);
        }
        bits >>= 1;
        k += 1;
    }
    p
}

/// The CRC of `A || B`, from the CRC of `A`, the CRC of `B` and `shift_past(|B|)`.
pub fn combine(crc_a: u32, crc_b: u32, shift_b: u32) -> u32 {
    mul_mod(shift_b, crc_a) ^ crc_b
}

/// Slots of a [`ShiftCache`]: a workload's large records come in a few lengths.
const SHIFT_SLOTS: usize = 16;

/// Shift factors of recently seen lengths, one slot per length modulo the slot count. Working a
/// factor out takes a multiplication per bit set in the length (about 0.3 µs for 4 KiB), more
/// than a pass over a few KiB costs, so a length gets its factor only the second time it comes:
/// a length seen once may never come again.
#[derive(Clone, Debug)]
pub struct ShiftCache {
    slots: [(u32, Option<u32>); SHIFT_SLOTS],
}

impl Default for ShiftCache {
    fn default() -> Self {
        ShiftCache {
            slots: [(u32::MAX, None); SHIFT_SLOTS],
        }
    }
}

impl ShiftCache {
    /// `shift_past(len)` when `len` came before in its slot; `None` the first time (the length
    /// is noted).
    pub fn get(&mut self, len: u32) -> Option<u32> {
        let slot = &mut self.slots[(len as usize / 8) % SHIFT_SLOTS];
        if slot.0 != len {
            *slot = (len, None);
            return None;
        }
        Some(*slot.1.get_or_insert_with(|| shift_past(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_gets_its_factor_the_second_time_it_comes_until_another_takes_its_slot() {
        let mut c = ShiftCache::default();
        assert_eq!(c.get(4132), None);
        assert_eq!(c.get(4132), Some(shift_past(4132)));
        assert_eq!(c.get(4132), Some(shift_past(4132)));
        // Another slot leaves it alone; the same slot replaces it.
        assert_eq!(c.get(4140), None);
        assert_eq!(c.get(4132), Some(shift_past(4132)));
        let same_slot = 4132 + 8 * SHIFT_SLOTS as u32;
        assert_eq!(c.get(same_slot), None);
        assert_eq!(c.get(4132), None);
        assert_eq!(c.get(4132), Some(shift_past(4132)));
    }
    use proptest::prelude::*;

    #[test]
    fn shifting_past_nothing_changes_nothing() {
        assert_eq!(shift_past(0), 1 << 31);
        assert_eq!(combine(0xDEAD_BEEF, 0, shift_past(0)), 0xDEAD_BEEF);
    }

    #[test]
    fn combining_with_an_empty_start_gives_the_second_crc() {
        let b = b"walship record bytes";
        assert_eq!(
            combine(0, crc32fast::hash(b), shift_past(b.len() as u32)),
            crc32fast::hash(b)
        );
    }

    proptest! {
        #[test]
        fn combining_equals_hashing_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..600),
            b in proptest::collection::vec(any::<u8>(), 0..9000),
        ) {
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(
                combine(crc32fast::hash(&a), crc32fast::hash(&b), shift_past(b.len() as u32)),
                crc32fast::hash(&whole)
            );
        }
    }

    #[test]
    fn a_shift_past_a_large_count_matches_hashing_zeros() {
        // Lengths with many bits set, up to a whole default segment.
        let zeros = vec![0u8; 16 << 20];
        for len in [1usize, 4095, 4132, 65_535, (16 << 20) - 1] {
            let head = crc32fast::hash(b"head");
            let mut h = crc32fast::Hasher::new_with_initial(head);
            h.update(&zeros[..len]);
            let tail = crc32fast::hash(&zeros[..len]);
            assert_eq!(
                combine(head, tail, shift_past(len as u32)),
                h.finalize(),
                "len {len}"
            );
        }
    }
}
