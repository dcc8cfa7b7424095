//! Kubernetes resource quantities (`500m`, `0.5`, `128Mi`, `1G`, `1e3`) as integers.
//!
//! Why exact decimal arithmetic and not `f64`: `0.1` CPU is 100 millicores, but
//! `0.1 * 1000.0` is `100.00000000000001`, which a ceiling turns into 101. A quantity is
//! parsed into an integer mantissa and a power of ten, then scaled and rounded up (as
//! `resource.Quantity.MilliValue` and `Value` do) in `i128`.

/// A parsed quantity: `mantissa * 10^exp10 * binary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    mantissa: i128,
    exp10: i32,
    binary: i128,
}

/// At most this many significant digits; more cannot be a real resource amount.
const MAX_DIGITS: usize = 30;

fn parse(q: &str) -> Option<Parsed> {
    let q = q.trim();
    let (negative, q) = match q.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, q.strip_prefix('+').unwrap_or(q)),
    };
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    if number.is_empty() || number == "." {
        return None;
    }
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac.contains('.') || int.len() + frac.len() > MAX_DIGITS {
        return None;
    }
    let mut mantissa: i128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa * 10 + i128::from(d - b'0');
    }
    let mut exp10 = -(frac.len() as i32);
    let mut binary: i128 = 1;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => binary = 1 << 10,
        "Mi" => binary = 1 << 20,
        "Gi" => binary = 1 << 30,
        "Ti" => binary = 1 << 40,
        "Pi" => binary = 1 << 50,
        "Ei" => binary = 1 << 60,
        other => {
            let exp = other.strip_prefix(['e', 'E'])?;
            let exp: i32 = exp.parse().ok()?;
            if exp.abs() > MAX_DIGITS as i32 {
                return None;
            }
            exp10 += exp;
        }
    }
    Some(Parsed {
        mantissa: if negative { -mantissa } else { mantissa },
        exp10,
        binary,
    })
}

/// `value * 10^scale`, rounded up, saturated to `i64`.
fn scaled(q: &str, scale: i32) -> Option<i64> {
    let p = parse(q)?;
    let n = p.mantissa.checked_mul(p.binary)?;
    let e = p.exp10 + scale;
    let v = if e >= 0 {
        10i128
            .checked_pow(e as u32)
            .and_then(|f| n.checked_mul(f))
            .unwrap_or(if n < 0 { i128::MIN } else { i128::MAX })
    } else {
        let d = 10i128.checked_pow((-e) as u32)?;
        // Ceiling division (toward +infinity), as Kubernetes rounds quantities up.
        let q = n / d;
        if n % d > 0 { q + 1 } else { q }
    };
    Some(v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// The quantity in thousandths (CPU in millicores), rounded up.
pub fn milli_value(q: &str) -> Option<i64> {
    scaled(q, 3)
}

/// The quantity in units (memory in bytes, pods), rounded up.
pub fn value(q: &str) -> Option<i64> {
    scaled(q, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millicores_exactly() {
        assert_eq!(milli_value("500m"), Some(500));
        assert_eq!(milli_value("0.1"), Some(100));
        assert_eq!(milli_value("0.25"), Some(250));
        assert_eq!(milli_value("2"), Some(2000));
        assert_eq!(milli_value("1.5"), Some(1500));
        assert_eq!(milli_value("100u"), Some(1), "rounded up");
        assert_eq!(milli_value("1e3"), Some(1_000_000));
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
        assert_eq!(value("8Ei"), Some(i64::MAX), "saturates");
    }
}
