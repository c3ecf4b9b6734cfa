//! Aligned text tables, the way kubectl and bpftool print them: upper-case
//! headers, columns separated by at least two spaces, `-` for nothing.

use std::fmt::Write as _;

#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut s = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = line.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == cols {
                    s.push_str(c);
                } else {
                    let _ = write!(s, "{c:<w$}  ");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Comma-separated, `-` when empty.
pub fn join<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A duration in seconds, human-sized (`850µs`, `12.3ms`, `1.20s`, `3m4s`).
pub fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        "-".into()
    } else if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else if s < 120.0 {
        format!("{s:.2}s")
    } else if s < 7200.0 {
        format!("{}m{}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{}h{}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut t = Table::new(&["NAME", "CALLS"]);
        t.row(vec!["greeter".into(), "10".into()]);
        t.row(vec!["a".into(), "2000".into()]);
        assert_eq!(t.render(), "NAME     CALLS\ngreeter  10\na        2000\n");
    }

    #[test]
    fn durations_are_human_sized() {
        assert_eq!(secs(0.00085), "850µs");
        assert_eq!(secs(0.0123), "12.3ms");
        assert_eq!(secs(1.2), "1.20s");
        assert_eq!(secs(184.0), "3m4s");
    }
}
