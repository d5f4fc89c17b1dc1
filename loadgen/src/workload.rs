//! What to send: the operation mix, key choice and value bytes, all driven by seeded RNGs.
//!
//! Every connection owns its own generator, seeded from `(--seed, round, connection index)`. So
//! the sequence of commands each connection sends is identical from run to run and from target
//! to target in a `compare`; only the interleaving between connections depends on timing.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::str::FromStr;

/// The two operations the workload issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Set = 0,
    Get = 1,
}

impl Op {
    pub const ALL: [Op; 2] = [Op::Set, Op::Get];
    pub fn name(self) -> &'static str {
        match self {
            Op::Set => "SET",
            Op::Get => "GET",
        }
    }
}

/// `--ratio SET:GET`, e.g. `1:10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub set: u32,
    pub get: u32,
}

impl FromStr for Ratio {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once(':').ok_or_else(|| format!("ratio {s:?} must look like SET:GET, e.g. 1:10"))?;
        let set: u32 = a.trim().parse().map_err(|_| format!("ratio {s:?}: {a:?} is not a whole number"))?;
        let get: u32 = b.trim().parse().map_err(|_| format!("ratio {s:?}: {b:?} is not a whole number"))?;
        if set == 0 && get == 0 {
            return Err(format!("ratio {s:?}: at least one side must be > 0"));
        }
        Ok(Ratio { set, get })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.set, self.get)
    }
}

/// `--key-dist uniform|zipf:<s>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    Uniform,
    Zipf(f64),
}

impl FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        if let Some(rest) = s.strip_prefix("zipf:") {
            let e: f64 = rest.parse().map_err(|_| format!("key-dist {s:?}: {rest:?} is not a number"))?;
            if !(e > 0.0 && e.is_finite()) {
                return Err(format!("key-dist {s:?}: the zipf exponent must be > 0"));
            }
            return Ok(KeyDist::Zipf(e));
        }
        Err(format!("key-dist {s:?}: expected `uniform` or `zipf:<s>` (e.g. zipf:0.99)"))
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => write!(f, "uniform"),
            KeyDist::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Zipf sampler over ranks `1..=n` with P(k) proportional to `1/k^s`, by rejection-inversion
/// (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates from monotone
/// discrete distributions", 1996). O(1) memory and expected O(1) time for any `n` and `s > 0`.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    threshold: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1 && s > 0.0);
        let mut z = Zipf { n: n as f64, s, h_integral_x1: 0.0, h_integral_n: 0.0, threshold: 0.0 };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.threshold = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`; rank 1 is the most frequent.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> u64 {
        loop {
            let u: f64 = self.h_integral_n + rng.gen::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.threshold || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1+x)/x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1)/x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

/// Picks keys in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeyPicker {
    Uniform(u64),
    Zipf(Zipf),
}

impl KeyPicker {
    pub fn new(keys: u64, dist: KeyDist) -> KeyPicker {
        match dist {
            KeyDist::Uniform => KeyPicker::Uniform(keys),
            KeyDist::Zipf(s) => KeyPicker::Zipf(Zipf::new(keys, s)),
        }
    }

    /// Key id in `0..keys`. Under zipf, key 0 is the hottest.
    pub fn pick<R: Rng>(&self, rng: &mut R) -> u64 {
        match self {
            KeyPicker::Uniform(n) => rng.gen_range(0..*n),
            KeyPicker::Zipf(z) => z.sample(rng) - 1,
        }
    }
}

/// Derive an independent, reproducible 64-bit seed for one stream (SplitMix64 finaliser over the
/// mixed inputs).
pub fn derive_seed(seed: u64, round: u64, stream: u64) -> u64 {
    let mut z =
        seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The per-connection command generator.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: SmallRng,
    keys: KeyPicker,
    set_threshold: u32,
    total: u32,
}

impl Generator {
    pub fn new(seed: u64, keys: u64, dist: KeyDist, ratio: Ratio) -> Generator {
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            keys: KeyPicker::new(keys, dist),
            set_threshold: ratio.set,
            total: ratio.set + ratio.get,
        }
    }

    /// The next operation and key id.
    pub fn next_op(&mut self) -> (Op, u64) {
        let op = if self.rng.gen_range(0..self.total) < self.set_threshold { Op::Set } else { Op::Get };
        (op, self.keys.pick(&mut self.rng))
    }
}

/// A value of `len` printable bytes, derived from the seed (content is irrelevant to the server
/// but should not be trivially compressible).
pub fn make_value(seed: u64, len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_dist_parse() {
        assert_eq!("1:10".parse::<Ratio>(), Ok(Ratio { set: 1, get: 10 }));
        assert_eq!("0:1".parse::<Ratio>(), Ok(Ratio { set: 0, get: 1 }));
        assert!("0:0".parse::<Ratio>().is_err());
        assert!("1-10".parse::<Ratio>().is_err());
        assert_eq!("uniform".parse::<KeyDist>(), Ok(KeyDist::Uniform));
        assert_eq!("zipf:0.99".parse::<KeyDist>(), Ok(KeyDist::Zipf(0.99)));
        assert!("zipf:0".parse::<KeyDist>().is_err());
        assert!("zipf:x".parse::<KeyDist>().is_err());
        assert!("gauss".parse::<KeyDist>().is_err());
    }

    fn counts(picker: &KeyPicker, n: usize, draws: usize, seed: u64) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut c = vec![0u64; n];
        for _ in 0..draws {
            let k = picker.pick(&mut rng) as usize;
            assert!(k < n, "key {k} out of range 0..{n}");
            c[k] += 1;
        }
        c
    }

    #[test]
    fn uniform_covers_the_range_evenly() {
        let n = 1000;
        let draws = 1_000_000;
        let c = counts(&KeyPicker::new(n as u64, KeyDist::Uniform), n, draws, 1);
        assert!(c.iter().all(|&x| x > 0), "every key drawn");
        let expect = (draws / n) as f64;
        for &x in &c {
            assert!((x as f64 - expect).abs() < expect * 0.2, "{x} vs {expect}");
        }
    }

    fn zipf_check(n: usize, s: f64) {
        let draws = 2_000_000;
        let c = counts(&KeyPicker::new(n as u64, KeyDist::Zipf(s)), n, draws, 7);
        // Exact probabilities: P(k) = k^-s / H(n, s).
        let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        for k in [1usize, 2, 3, 10, 100] {
            let expect = (k as f64).powf(-s) / h;
            let got = c[k - 1] as f64 / draws as f64;
            assert!(
                (got - expect).abs() < expect * 0.05 + 3.0 / draws as f64,
                "n={n} s={s} rank {k}: got {got:.5} expected {expect:.5}"
            );
        }
        // Rank-1 to rank-2 frequency ratio is 2^s.
        let ratio = c[0] as f64 / c[1] as f64;
        assert!((ratio - 2f64.powf(s)).abs() < 2f64.powf(s) * 0.03, "rank1/rank2 = {ratio}, expected {}", 2f64.powf(s));
    }

    #[test]
    fn zipf_shape_matches_theory() {
        zipf_check(1000, 0.99);
        zipf_check(1000, 1.0);
        zipf_check(10_000, 1.2);
        zipf_check(500, 0.5);
    }

    #[test]
    fn zipf_edge_sizes() {
        let z = KeyPicker::new(1, KeyDist::Zipf(0.99));
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..1000 {
            assert_eq!(z.pick(&mut rng), 0);
        }
        // Huge key spaces still work and stay in range.
        let z = KeyPicker::new(u32::MAX as u64 * 4, KeyDist::Zipf(0.99));
        for _ in 0..10_000 {
            assert!(z.pick(&mut rng) < u32::MAX as u64 * 4);
        }
    }

    #[test]
    fn same_seed_same_sequence_different_seed_different() {
        let r = Ratio { set: 1, get: 3 };
        let mk = |seed| Generator::new(seed, 10_000, KeyDist::Zipf(0.9), r);
        let (mut a, mut b, mut c) = (mk(5), mk(5), mk(6));
        let sa: Vec<_> = (0..1000).map(|_| a.next_op()).collect();
        let sb: Vec<_> = (0..1000).map(|_| b.next_op()).collect();
        let sc: Vec<_> = (0..1000).map(|_| c.next_op()).collect();
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
        assert_eq!(make_value(1, 100), make_value(1, 100));
        assert_ne!(make_value(1, 100), make_value(2, 100));
        assert_ne!(derive_seed(1, 0, 0), derive_seed(1, 0, 1));
        assert_ne!(derive_seed(1, 0, 0), derive_seed(1, 1, 0));
    }

    #[test]
    fn op_mix_follows_ratio() {
        let mut g = Generator::new(9, 100, KeyDist::Uniform, Ratio { set: 1, get: 10 });
        let sets = (0..110_000).filter(|_| g.next_op().0 == Op::Set).count();
        assert!((9_000..11_000).contains(&sets), "{sets}");
        let mut g = Generator::new(9, 100, KeyDist::Uniform, Ratio { set: 0, get: 1 });
        assert!((0..1000).all(|_| g.next_op().0 == Op::Get));
    }
}
