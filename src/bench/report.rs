//! Result tables: aligned text for terminals, JSON for files.

use std::fmt::Write as _;

/// A text table with a header row; columns are right-aligned except the first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, c) in cells.iter().enumerate().take(cols) {
            let pad = width[i] - c.chars().count();
            if i == 0 {
                let _ = write!(out, "{c}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{c}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(
        &mut out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// `0.1234` → `"12.3%"`.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Seconds → milliseconds with one decimal.
pub fn ms(s: f64) -> String {
    format!("{:.1}", s * 1000.0)
}

/// A ratio with two decimals.
pub fn ratio(x: f64) -> String {
    format!("{x:.2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = table(
            &["policy", "hit"],
            &[
                vec!["kvmesh".into(), pct(0.5)],
                vec!["rr".into(), pct(0.125)],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "policy    hit");
        assert_eq!(lines[2], "kvmesh  50.0%");
        assert_eq!(lines[3], "rr      12.5%");
    }
}
