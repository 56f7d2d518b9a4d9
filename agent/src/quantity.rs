//! Kubernetes resource quantities (`500m`, `2`, `8Gi`, `16303160Ki`,
//! `1e9`), as nodes report their capacity, turned into numbers the hub can
//! add up: CPU in millicores, memory in bytes.

/// A quantity as `mantissa × 10^exp10 × 1024^exp1024`, exactly (floats
/// would turn `1900m` into 1901 millicores).
struct Parsed {
    mantissa: u128,
    exp10: i32,
    exp1024: u32,
}

fn parse(text: &str) -> Option<Parsed> {
    let text = text.trim().strip_prefix('+').unwrap_or(text.trim());
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits.parse().ok()?;
    let mut exp10 = -i32::try_from(fraction.len()).ok()?;
    let mut exp1024 = 0;
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
        "Ki" => exp1024 = 1,
        "Mi" => exp1024 = 2,
        "Gi" => exp1024 = 3,
        "Ti" => exp1024 = 4,
        "Pi" => exp1024 = 5,
        "Ei" => exp1024 = 6,
        exponent => {
            let e: i32 = exponent.strip_prefix(['e', 'E'])?.parse().ok()?;
            exp10 = exp10.checked_add(e)?;
        }
    }
    Some(Parsed { mantissa, exp10, exp1024 })
}

/// `text × 10^shift`, rounded up to a whole number.
fn whole(text: &str, shift: i32) -> Option<u64> {
    let p = parse(text)?;
    let mut v = p.mantissa.checked_mul(1024u128.checked_pow(p.exp1024)?)?;
    let exp = p.exp10.checked_add(shift)?;
    if exp >= 0 {
        v = v.checked_mul(10u128.checked_pow(exp.unsigned_abs())?)?;
    } else {
        let d = 10u128.checked_pow(exp.unsigned_abs())?;
        v = v.div_ceil(d);
    }
    u64::try_from(v).ok()
}

/// CPU as millicores (`500m` → 500, `2` → 2000), rounded up as Kubernetes
/// rounds quantities it cannot represent.
pub(crate) fn cpu_millis(text: &str) -> Option<u64> {
    whole(text, 3)
}

/// Memory (or any byte count) as bytes (`8Gi` → 8589934592), rounded up.
pub(crate) fn bytes(text: &str) -> Option<u64> {
    whole(text, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("3920m"), Some(3920));
        assert_eq!(cpu_millis("250000u"), Some(250));
        assert_eq!(cpu_millis("1900m"), Some(1900));
        assert_eq!(cpu_millis("0.1"), Some(100));
        assert_eq!(cpu_millis("1n"), Some(1), "rounded up");
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(cpu_millis("-1"), None);
        assert_eq!(cpu_millis("."), None);
    }

    #[test]
    fn memory() {
        assert_eq!(bytes("8Gi"), Some(8 * 1024 * 1024 * 1024));
        assert_eq!(bytes("16303160Ki"), Some(16_303_160 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e9"), Some(1_000_000_000));
        assert_eq!(bytes("129M"), Some(129_000_000));
        assert_eq!(bytes("12345"), Some(12345));
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("12Zi"), None);
        assert_eq!(bytes("1e400"), None);
        assert_eq!(bytes(""), None);
    }
}
