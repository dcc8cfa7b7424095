//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `2`) as numbers.

/// Bytes in a memory quantity, or `None` if it is not one.
pub fn bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let value: f64 = num.parse().ok()?;
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "m" => 1e-3,
        _ => return None,
    };
    let v = value * factor;
    (v.is_finite() && v >= 0.0).then_some(v.ceil() as u64)
}

/// Millicores in a CPU quantity (`500m`, `0.5`, `2`).
pub fn millicores(q: &str) -> Option<u32> {
    let q = q.trim();
    let v = match q.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => q.parse::<f64>().ok()? * 1000.0,
    };
    (v.is_finite() && v >= 0.0 && v <= f64::from(u32::MAX)).then_some(v.ceil() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("64Ki"), Some(65536));
        assert_eq!(bytes("1000"), Some(1000));
        assert_eq!(bytes("1.5Gi"), Some(1610612736));
        assert_eq!(bytes("12Xi"), None);
        assert_eq!(millicores("500m"), Some(500));
        assert_eq!(millicores("0.25"), Some(250));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("abc"), None);
    }
}
