//! The RSL checksum: the 64-bit "Rabin fingerprint" every RSL record, message, packet and
//! checkpoint block carries (docs/spec/formats.md §2).
//!
//! Mathematically it is a reflected CRC-64 with polynomial `0xA795D0F29B4DCDF8` (reflected
//! form), whose initial value equals that polynomial and with no final XOR. It is *not* any of
//! the catalogued CRC-64 variants, so no library CRC is used. The implementation is
//! slice-by-16 over tables built at compile time, bit-identical to the bytewise definition.
//! Long inputs are taken in blocks of two lanes checksummed side by side and joined with
//! one carry-less multiplication per block: one lane's table look-ups wait on its previous
//! step, so two independent lanes keep the core busy (about 1.4 times the speed of one).

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

/// Bytes in each of the two lanes of a block.
const LANE: usize = 1024;
// A lane is whole 16-byte steps: `chunks_exact` would otherwise drop its tail unseen.
const _: () = assert!(LANE.is_multiple_of(SLICES));
/// `x^(8·LANE)` mod the polynomial: multiplying a register by it advances it over `LANE` zero
/// bytes.
const OVER_LANE: u64 = x_pow_8n(LANE);

/// Continues a checksum: `update(checksum(a), b) == checksum(a ‖ b)`.
pub fn update(mut crc: u64, data: &[u8]) -> u64 {
    let mut blocks = data.chunks_exact(2 * LANE);
    for block in &mut blocks {
        let (first, second) = block.split_at(LANE);
        // The checksum is linear: crc(c, a ‖ b) = crc(c, a) advanced over |b| zero bytes,
        // xor crc(0, b). Both lanes run in one loop so their look-ups overlap.
        let (mut a, mut b) = (crc, 0);
        for (x, y) in first.chunks_exact(SLICES).zip(second.chunks_exact(SLICES)) {
            a = step16(a, x);
            b = step16(b, y);
        }
        crc = mul_mod(OVER_LANE, a) ^ b;
    }
    let mut chunks = blocks.remainder().chunks_exact(SLICES);
    for chunk in &mut chunks {
        crc = step16(crc, chunk);
    }
    update_bytewise(crc, chunks.remainder())
}

/// The register after 16 more bytes (slice-by-16).
#[inline(always)]
fn step16(crc: u64, chunk: &[u8]) -> u64 {
    let lo = crc ^ u64::from_le_bytes(chunk[..8].try_into().expect("8-byte half"));
    let hi = u64::from_le_bytes(chunk[8..SLICES].try_into().expect("8-byte half"));
    let mut next = 0;
    for (k, byte) in lo.to_le_bytes().into_iter().enumerate() {
        next ^= TABLES[15 - k][byte as usize];
    }
    for (k, byte) in hi.to_le_bytes().into_iter().enumerate() {
        next ^= TABLES[7 - k][byte as usize];
    }
    next
}

/// `a · b` modulo the polynomial, both in the reflected form registers use (bit 63 is `x^0`).
const fn mul_mod(a: u64, mut b: u64) -> u64 {
    let mut product = 0;
    let mut bit = 1u64 << 63;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        // b · x
        b = if b & 1 == 1 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// `x^(8n)` modulo the polynomial, by square-and-multiply.
const fn x_pow_8n(mut n: usize) -> u64 {
    let (mut power, mut square) = (1u64 << 63, 1u64 << (63 - 8)); // x^0, x^8
    while n > 0 {
        if n & 1 == 1 {
            power = mul_mod(square, power);
        }
        square = mul_mod(square, square);
        n >>= 1;
    }
    power
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

    #[test]
    fn multiplying_by_x_pow_8n_advances_over_n_zero_bytes() {
        for n in [0, 1, 7, 16, LANE, 3000] {
            for crc in [0, 1, INIT, u64::MAX] {
                assert_eq!(mul_mod(x_pow_8n(n), crc), update_bytewise(crc, &vec![0; n]), "n = {n}");
            }
        }
    }

    proptest! {
        #[test]
        fn two_lane_blocks_equal_bytewise(
            data in proptest::collection::vec(any::<u8>(), 0..5 * LANE),
            start in 0usize..16,
            crc in any::<u64>(),
        ) {
            let data = &data[start.min(data.len())..];
            prop_assert_eq!(update(crc, data), update_bytewise(crc, data));
        }

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
