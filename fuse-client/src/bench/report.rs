//! The bench's result: a [`Report`] of [`Row`]s, printed as a table or as JSON (`--json`), and
//! two JSON results side by side with their ratio (`cairn bench --compare A.json B.json`).
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::Path;

/// One figure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// The row's stable name (`--rows` takes these).
    pub id: String,
    pub label: String,
    /// Operations (or MiB) per second; for unit `s`, seconds.
    pub value: f64,
    pub unit: String,
    /// Items the row counted: files, directories, MiB or reads.
    pub count: u64,
    /// What the reader of the figure should know; "" when nothing.
    pub note: String,
}

/// One run of the bench (also its `--json` shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// The directory the bench ran in.
    pub dir: String,
    pub files: u64,
    pub data_mib: u64,
    pub rows: Vec<Row>,
}

impl Report {
    /// The `--json` output.
    pub fn json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// The human-readable table, one line per row.
    pub fn table(&self) -> String {
        let mut out = format!(
            "cairn bench in {} (--files {}, --data-mib {})\n",
            self.dir, self.files, self.data_mib
        );
        let _ = writeln!(
            out,
            "{:<12} {:<36} {:>10}  {:<8} note",
            "row", "what", "value", "unit"
        );
        for r in &self.rows {
            let line = format!(
                "{:<12} {:<36} {:>10}  {:<8} {}",
                r.id,
                r.label,
                number(r.value),
                r.unit,
                r.note
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Reads two `--json` results and returns [`compare_table`] of them, the columns named after
/// the files (`cairn.json` and `local.json`: "cairn" and "local").
pub fn compare_files(a: &Path, b: &Path) -> Result<String> {
    let (ra, rb) = (read_report(a)?, read_report(b)?);
    Ok(compare_table((&stem(a), &stem(b)), &ra, &rb))
}

fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("parse {} as a `cairn bench --json` result", path.display()))
}

fn stem(path: &Path) -> String {
    path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

/// `a` and `b` side by side, one line per row, with the ratio a/b; `names` head the two
/// columns. Rows only one side has show `-` on the other.
pub fn compare_table(names: (&str, &str), a: &Report, b: &Report) -> String {
    let (na, nb) = names;
    let ratio_head = format!("{na}/{nb}");
    let mut out = format!(
        "{na}: {} | {nb}: {} (--files {}, --data-mib {})\n",
        a.dir, b.dir, a.files, a.data_mib
    );
    let _ = writeln!(
        out,
        "{:<12} {:<36} {:>10} {:>10}  {:<8} {:>11}",
        "row", "what", na, nb, "unit", ratio_head
    );
    let only_b = b
        .rows
        .iter()
        .filter(|r| !a.rows.iter().any(|x| x.id == r.id));
    for row in a.rows.iter().chain(only_b) {
        let va = a.rows.iter().find(|r| r.id == row.id).map(|r| r.value);
        let vb = b.rows.iter().find(|r| r.id == row.id).map(|r| r.value);
        let ratio = match (va, vb) {
            (Some(x), Some(y)) if y > 0.0 => number(x / y),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<36} {:>10} {:>10}  {:<8} {:>11}",
            row.id,
            row.label,
            va.map_or("-".into(), number),
            vb.map_or("-".into(), number),
            row.unit,
            ratio
        );
    }
    out.push_str("(unit s: lower is better; every other unit: higher is better)\n");
    for (name, report) in [(na, a), (nb, b)] {
        for r in report.rows.iter().filter(|r| !r.note.is_empty()) {
            let _ = writeln!(out, "note {name} {}: {}", r.id, r.note);
        }
    }
    out
}

/// A figure with three significant digits (84512, 512, 3.14, 0.00123), so that the columns
/// stay narrow and a ratio of 0.002 does not print as 0.
fn number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    format!("{v:.decimals$}")
}
