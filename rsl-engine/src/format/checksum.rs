//! The RSL checksum: the 64-bit "Rabin fingerprint" every RSL record, message, packet and
//! checkpoint block carries (docs/spec/formats.md §2).
//!
//! Mathematically it is a reflected CRC-64 with polynomial `0xA795D0F29B4DCDF8` (reflected
//! form), whose initial value equals that polynomial and with no final XOR. It is *not* any of
//! the catalogued CRC-64 variants, so no library CRC is used. The implementation is
//! slice-by-16 over tables built at compile time, bit-identical to the bytewise definition.

/// The reflected polynomial, and also the fingerprint of the empty string.
pub const POLY: u64 = 0xA795_D0F2_9B4D_CDF8;
/// The register value a fresh checksum starts from.
pub const INIT: u64 = POLY;

const SLICES: usize = 16;

/// `TABLES[0]` is the bytewise table; `TABLES[k][i]` is `TABLES[0][i]` advanced by `8k` zero bits.
static TABLES: [[u64; 256]; SLICES] = build_tables();

const fn build_tables() -> [[u64; 256]; SLICES] {
    let mut t = [[0u64; 256]; SLICES];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < SLICES {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// The checksum of `data`, as `RSLUtils::CalculateChecksum` computes it.
pub fn checksum(data: &[u8]) -> u64 {
    update(INIT, data)
}

/// Continues a checksum: `update(checksum(a), b) == checksum(a ‖ b)`.
pub fn update(mut crc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(SLICES);
    for chunk in &mut chunks {
        let lo = crc ^ u64::from_le_bytes(chunk[..8].try_into().expect("8-byte half"));
        let hi = u64::from_le_bytes(chunk[8..].try_into().expect("8-byte half"));
        let mut next = 0;
        for (k, byte) in lo.to_le_bytes().into_iter().enumerate() {
            next ^= TABLES[15 - k][byte as usize];
        }
        for (k, byte) in hi.to_le_bytes().into_iter().enumerate() {
            next ^= TABLES[7 - k][byte as usize];
        }
        crc = next;
    }
    update_bytewise(crc, chunks.remainder())
}

/// The defining one-byte-at-a-time update; the reference the fast path is tested against.
pub fn update_bytewise(mut crc: u64, data: &[u8]) -> u64 {
    for &b in data {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ b as u64) & 0xFF) as usize];
    }
    crc
}

/// An incremental checksum, for data that arrives in pieces.
#[derive(Clone, Copy, Debug)]
pub struct Hasher(u64);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(INIT)
    }
}

impl Hasher {
    /// Adds `data` to the checksum; chunks may be split anywhere.
    pub fn write(&mut self, data: &[u8]) {
        self.0 = update(self.0, data);
    }
    /// The checksum of everything written so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_entries_match_the_spec() {
        assert_eq!(TABLES[0][0x01], 0xC807_DD08_C667_7A5E);
        assert_eq!(TABLES[0][0x80], 0xA795_D0F2_9B4D_CDF8);
        assert_eq!(TABLES[0][0xFF], 0x82E4_2BA4_AFAB_A09A);
    }

    #[test]
    fn test_vectors() {
        let vectors: [(&[u8], u64); 6] = [
            (b"", 0xa795d0f29b4dcdf8),
            (b"a", 0xd62bafc94e2152f3),
            (b"hello", 0x2e68eb152273854b),
            (b"123456789", 0x69bc7a5d9767af72),
            (b"hello checkpoint", 0x2c9220572d26c787),
            (b"The quick brown fox jumps over the lazy dog", 0x1cf16b8c5e5e76ef),
        ];
        for (input, expected) in vectors {
            assert_eq!(checksum(input), expected, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(update_bytewise(INIT, input), expected);
        }
    }

    proptest! {
        #[test]
        fn fast_path_equals_bytewise(data in proptest::collection::vec(any::<u8>(), 0..300), start in 0usize..16) {
            let data = &data[start.min(data.len())..];
            prop_assert_eq!(checksum(data), update_bytewise(INIT, data));
        }

        #[test]
        fn chaining(a in proptest::collection::vec(any::<u8>(), 0..100), b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let whole = [a.as_slice(), b.as_slice()].concat();
            prop_assert_eq!(update(checksum(&a), &b), checksum(&whole));
            let mut h = Hasher::default();
            h.write(&a);
            h.write(&b);
            prop_assert_eq!(h.finish(), checksum(&whole));
        }
    }
}
