//! Kubernetes resource quantities (`64Gi`, `500G`, `1.5Ti`) as byte counts.
//! k8s-openapi carries `Quantity` as an opaque string and no maintained crate
//! parses it for kube 5's types, so this small parser does, for the suffixes
//! the API defines (binary Ki…Ei, decimal k…E, plain and decimal numbers).

/// Why a quantity could not be read as bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a byte quantity (use forms like 64Gi, 500G or 1048576)")]
pub struct BadQuantity(pub String);

/// Bytes in `q`, rounded up to a whole byte.
pub fn bytes(q: &str) -> Result<u64, BadQuantity> {
    let bad = || BadQuantity(q.to_string());
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let total = (value * factor).ceil();
    if !total.is_finite() || total < 0.0 || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_plain_quantities_become_bytes() {
        assert_eq!(bytes("64Gi"), Ok(64 << 30));
        assert_eq!(bytes("500G"), Ok(500_000_000_000));
        assert_eq!(bytes("1.5Ki"), Ok(1536));
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert_eq!(bytes(" 2Mi "), Ok(2 << 20));
    }

    #[test]
    fn anything_else_is_refused_with_the_value() {
        for q in ["", "Gi", "64 Gi", "64gb", "-1Gi", "1.2.3", "1m", "12Zi"] {
            let e = bytes(q).expect_err(q);
            assert!(e.to_string().contains(&format!("{q:?}")));
        }
    }
}
