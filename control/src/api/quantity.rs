//! Kubernetes resource quantities (`500m`, `0.5`, `128Mi`, `1G`, `1e3`): the one parser
//! that validation, the scheduler and the node all use.
//!
//! Why one parser: when the API, the scheduler and the node read a quantity differently,
//! a value one of them refuses is "no limit" to another (`1Zi` was admitted and the node
//! then ran the guest unlimited), and `2.007` CPU was 2007m to one and 2008m to the other.
//!
//! The grammar and the rounding are Kubernetes' (`resource.ParseQuantity`): a sign, digits
//! with an optional fraction, then a suffix (`n u m k M G T P E`, `Ki ... Ei`, or an
//! exponent `e3`/`E-2`). Values are rounded up to the nanounit, and capped at 2^63-1
//! units (so `1e1000` is the largest quantity, not an error). Why exact decimal arithmetic
//! and not `f64`: `0.1` CPU is 100 millicores, but `0.1 * 1000.0` is
//! `100.00000000000001`, which a ceiling turns into 101. A quantity is an integer
//! mantissa, a power of ten and a power of two, scaled and rounded up in `u128`.

use std::cmp::Ordering;

/// Why a string is not a quantity, worded as Kubernetes words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )]
    Format,
    #[error("unable to parse quantity's suffix")]
    Suffix,
}

/// A parsed quantity: `(-1)^negative * (mantissa + sticky) * 10^exp10 * 2^binary`, where
/// `sticky` stands for dropped nonzero digits beyond the first [`MAX_DIGITS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    mantissa: u128,
    exp10: i64,
    binary: u32,
    sticky: bool,
}

/// Significant digits kept exactly: `10^20 * 2^60` still fits in a `u128`. Beyond them a
/// quantity is only known to be a little larger, which rounding up honours.
const MAX_DIGITS: usize = 20;

/// The largest quantity, in units, as Kubernetes caps it.
const MAX_UNITS: u128 = i64::MAX as u128;

/// The characters a suffix is made of.
const SUFFIX_CHARS: &[u8] = b"eEinumkKMGTP";

impl Quantity {
    /// Parses a quantity as Kubernetes does; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let s = s.trim();
        let (negative, num, denom, suffix) = split(s)?;
        let (mut exp10, binary) = interpret_suffix(suffix)?;
        exp10 -= denom.len() as i64;
        let digits = num.bytes().chain(denom.bytes()).skip_while(|&d| d == b'0');
        let mut mantissa: u128 = 0;
        let mut sticky = false;
        for (i, d) in digits.enumerate() {
            if i < MAX_DIGITS {
                mantissa = mantissa * 10 + u128::from(d - b'0');
            } else {
                exp10 += 1;
                sticky |= d != b'0';
            }
        }
        Ok(Quantity {
            negative: negative && (mantissa != 0 || sticky),
            mantissa,
            exp10,
            binary,
            sticky,
        })
    }

    /// Below zero (`-0` is not).
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The magnitude times `10^scale`, rounded up, capped at 2^63-1 units.
    fn magnitude(&self, scale: i64) -> u128 {
        let cap = u32::try_from(scale)
            .ok()
            .and_then(|s| 10u128.checked_pow(s))
            .and_then(|f| MAX_UNITS.checked_mul(f))
            .unwrap_or(u128::MAX);
        if self.mantissa == 0 && !self.sticky {
            return 0;
        }
        // mantissa < 10^20 and binary <= 60: no overflow.
        let n = self.mantissa << self.binary;
        let e = self.exp10.saturating_add(scale);
        let v = if e >= 0 {
            u32::try_from(e)
                .ok()
                .and_then(|e| 10u128.checked_pow(e))
                .and_then(|f| n.checked_mul(f))
                .map_or(u128::MAX, |v| v.saturating_add(u128::from(self.sticky)))
        } else {
            match u32::try_from(-e).ok().and_then(|e| 10u128.checked_pow(e)) {
                // Rounded up: any remainder (or dropped digit) is one more.
                Some(d) => n / d + u128::from(!n.is_multiple_of(d) || self.sticky),
                // n < 10^39 <= d: a nonzero amount below one rounds up to one.
                None => 1,
            }
        };
        v.min(cap)
    }

    fn signed(&self, scale: i64) -> i64 {
        let m = i64::try_from(self.magnitude(scale)).unwrap_or(i64::MAX);
        if self.negative { -m } else { m }
    }

    /// In thousandths (CPU in millicores), rounded up, as `Quantity.MilliValue()`.
    pub fn milli_value(&self) -> i64 {
        self.signed(3)
    }

    /// In units (memory in bytes), rounded up, as `Quantity.Value()`.
    pub fn value(&self) -> i64 {
        self.signed(0)
    }

    /// In nanounits, the precision Kubernetes keeps: what comparisons use.
    fn nano(&self) -> i128 {
        let m = i128::try_from(self.magnitude(9)).unwrap_or(i128::MAX);
        if self.negative { -m } else { m }
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    /// By amount: `1Gi` > `1G`, `1000m` == `1`.
    fn cmp(&self, other: &Self) -> Ordering {
        self.nano().cmp(&other.nano())
    }
}

/// Splits `[+-]digits[.digits]suffix` as Kubernetes' `parseQuantityString` does: leading
/// zeros are dropped, an empty number is zero (`.`, `-`, `k` are zero), and the suffix is
/// letters of `eEinumkKMGTP` then an optional signed integer.
fn split(s: &str) -> Result<(bool, &str, &str, &str), QuantityError> {
    let b = s.as_bytes();
    let end = b.len();
    if end == 0 {
        return Err(QuantityError::Format);
    }
    let mut pos = 0;
    let negative = match b[0] {
        b'-' => {
            pos = 1;
            true
        }
        b'+' => {
            pos = 1;
            false
        }
        _ => false,
    };
    let digits_from = |mut p: usize| {
        while p < end && b[p].is_ascii_digit() {
            p += 1;
        }
        p
    };
    let num_end = digits_from(pos);
    let num = &s[pos..num_end];
    pos = num_end;
    let mut denom = "";
    if pos < end && b[pos] == b'.' {
        let denom_end = digits_from(pos + 1);
        denom = &s[pos + 1..denom_end];
        pos = denom_end;
    }
    let suffix_start = pos;
    while pos < end && SUFFIX_CHARS.contains(&b[pos]) {
        pos += 1;
    }
    if pos < end && matches!(b[pos], b'-' | b'+') {
        pos += 1;
    }
    if digits_from(pos) < end {
        return Err(QuantityError::Format);
    }
    Ok((negative, num, denom, &s[suffix_start..]))
}

/// A suffix as a power of ten and a power of two.
fn interpret_suffix(suffix: &str) -> Result<(i64, u32), QuantityError> {
    Ok(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let exp = other
                .strip_prefix(['e', 'E'])
                .filter(|e| !e.is_empty())
                .ok_or(QuantityError::Suffix)?;
            let exp: i32 = exp.parse().map_err(|_| QuantityError::Suffix)?;
            (i64::from(exp), 0)
        }
    })
}

/// The quantity in thousandths (CPU in millicores), rounded up; `None` if it is not one.
pub fn milli_value(q: &str) -> Option<i64> {
    Quantity::parse(q).ok().map(|q| q.milli_value())
}

/// The quantity in units (memory in bytes, pods), rounded up; `None` if it is not one.
pub fn value(q: &str) -> Option<i64> {
    Quantity::parse(q).ok().map(|q| q.value())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millicores_exactly() {
        assert_eq!(milli_value("500m"), Some(500));
        assert_eq!(milli_value("0.1"), Some(100));
        assert_eq!(milli_value("0.25"), Some(250));
        assert_eq!(milli_value("2"), Some(2000));
        assert_eq!(milli_value("1.5"), Some(1500));
        assert_eq!(milli_value("2.007"), Some(2007));
        assert_eq!(milli_value("2.0071"), Some(2008), "rounded up");
        assert_eq!(milli_value("100u"), Some(1), "rounded up");
        assert_eq!(milli_value("1e3"), Some(1_000_000));
        assert_eq!(milli_value("1E-3"), Some(1));
        assert_eq!(milli_value("abc"), None);
        assert_eq!(milli_value(""), None);
        assert_eq!(milli_value("1.2.3"), None);
    }

    #[test]
    fn memory_in_bytes() {
        assert_eq!(value("128Mi"), Some(128 << 20));
        assert_eq!(value("1G"), Some(1_000_000_000));
        assert_eq!(value("64Ki"), Some(65536));
        assert_eq!(value("1.5Gi"), Some(1_610_612_736));
        assert_eq!(value("1000"), Some(1000));
        assert_eq!(value("129M"), Some(129_000_000));
        assert_eq!(value("500m"), Some(1), "a fraction of a byte rounds up");
        assert_eq!(value("12Xi"), None);
        assert_eq!(value("110"), Some(110));
        assert_eq!(value("8Ei"), Some(i64::MAX), "capped");
        assert_eq!(value(" 1Ki "), Some(1024));
    }

    #[test]
    fn the_grammar_is_kubernetes() {
        for bad in ["1Zi", "12Xi", "1.2.3", "1Kb", "1e3.5", "1 Mi", "0x10", ""] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Format), "{bad:?}");
        }
        for bad in ["1mi", "1e", "1iM", "1KK", "--1", "1e99999999999"] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError::Suffix), "{bad:?}");
        }
        // Kubernetes reads these as zero.
        for zero in ["0", "-0", ".", "-", "+", "k", "0.000"] {
            let q = Quantity::parse(zero).unwrap();
            assert_eq!((q.value(), q.is_negative()), (0, false), "{zero:?}");
        }
        assert_eq!(
            QuantityError::Format.to_string(),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
    }

    #[test]
    fn signs_caps_and_tiny_values() {
        let q = Quantity::parse("-1").unwrap();
        assert!(q.is_negative());
        assert_eq!(q.value(), -1);
        assert_eq!(milli_value("-100m"), Some(-100));
        assert_eq!(
            value("1e1000"),
            Some(i64::MAX),
            "capped, as Kubernetes caps it"
        );
        assert_eq!(milli_value("1e1000"), Some(i64::MAX));
        assert_eq!(value("1e-1000"), Some(1), "a nonzero amount rounds up");
        assert_eq!(
            value("0.000000000000000000000000000000000000000001"),
            Some(1)
        );
        // More digits than are kept exactly: still rounded up, still ordered.
        assert_eq!(value("1.0000000000000000000000000001"), Some(2));
        assert_eq!(value("123456789012345678901234567890m"), Some(i64::MAX));
        assert_eq!(
            value("12345678901234567890123.4567890"),
            Some(i64::MAX),
            "above the cap"
        );
        assert_eq!(value("1234567890123456789012.3e-10"), Some(123_456_789_013));
    }

    #[test]
    fn quantities_compare_by_amount() {
        let q = |s| Quantity::parse(s).unwrap();
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1000m").cmp(&q("1")), Ordering::Equal);
        assert!(q("2") > q("1"));
        assert!(q("-1") < q("0"));
        assert!(q("100n") > q("99n"));
        assert_eq!(q("1e1000").cmp(&q("1e999")), Ordering::Equal, "both capped");
    }
}
