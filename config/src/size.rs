/// Parses a byte size: a whole number with an optional unit, `B`, decimal
/// `KB` `MB` `GB` `TB` (powers of 1000) or binary `KiB` `MiB` `GiB` `TiB`
/// (powers of 1024). Units are case-insensitive and may follow a space:
/// `"64MiB"`, `"1 GiB"`, `"10MB"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let unit = unit.trim_start();
    let hint = "expected a whole number of bytes with an optional unit \
                (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. \"64MiB\"";
    if num.is_empty() {
        return Err(format!("invalid size {s:?}: {hint}"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ if unit.starts_with('.') => {
            return Err(format!(
                "invalid size {s:?}: use a whole number with a smaller unit, e.g. \"1536MiB\""
            ))
        }
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}; {hint}")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10 mb"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("3kB"), Ok(3000));
    }

    #[test]
    fn bad_sizes() {
        let e = |s| parse_size(s).unwrap_err();
        expect_test::expect![[r#"invalid size "": expected a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "64MiB""#]].assert_eq(&e(""));
        expect_test::expect![[r#"invalid size "MiB": expected a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "64MiB""#]].assert_eq(&e("MiB"));
        expect_test::expect![[r#"invalid size "64 megs": unknown unit "megs"; expected a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "64MiB""#]].assert_eq(&e("64 megs"));
        expect_test::expect![[
            r#"invalid size "1.5GiB": use a whole number with a smaller unit, e.g. "1536MiB""#
        ]]
        .assert_eq(&e("1.5GiB"));
        expect_test::expect![[r#"invalid size "99999999999TiB": too large"#]]
            .assert_eq(&e("99999999999TiB"));
        expect_test::expect![[r#"invalid size "-5": expected a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "64MiB""#]].assert_eq(&e("-5"));
    }
}
