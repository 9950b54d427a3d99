//! The figures of a run: the JSON written to `bench/results/<date>.json`,
//! and the table written into `docs/benchmarks.md` between its markers.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::procfs::{CpuUsage, Machine};

/// Bumped when the JSON changes shape.
pub const SCHEMA_VERSION: u32 = 1;

/// The generated table sits between these lines of the docs page; everything
/// else in the page is written by hand and left alone.
pub const TABLE_START: &str =
    "<!-- bench:table:start (written by `just bench`; edits here are overwritten) -->";
pub const TABLE_END: &str = "<!-- bench:table:end -->";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// `YYYY-MM-DD` (UTC), the name of the results file.
    pub date: String,
    pub started_at: String,
    pub finished_at: String,
    /// `full` or `quick` (`--quick`: small sizes, figures not comparable).
    pub mode: String,
    pub git: Git,
    pub machine: Machine,
    pub setup: BTreeMap<String, serde_json::Value>,
    /// `1_api_throughput` … `6_peak_memory`.
    pub phases: BTreeMap<String, Phase>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Git {
    pub commit: String,
    /// Uncommitted changes in the tree the binaries were built from.
    pub dirty: bool,
}

/// A number and what it counts.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
}

/// One phase's outcome.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Phase {
    pub title: String,
    /// `ok`, or `failed` with `error`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_seconds: f64,
    pub figures: BTreeMap<String, Figure>,
    /// Each `{value, unit: "ratio"}`: the part's figure over its baseline.
    pub ratios: BTreeMap<String, Figure>,
    /// Where the CPU went in each measured window, by window name.
    pub cpu: BTreeMap<String, CpuUsage>,
    /// Rows of the docs table.
    #[serde(skip)]
    pub rows: Vec<Row>,
}

/// A row of the docs table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub measure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub cpu: String,
}

impl Phase {
    pub fn new(title: &str) -> Phase {
        Phase {
            title: title.to_owned(),
            status: "ok".into(),
            ..Phase::default()
        }
    }

    pub fn figure(&mut self, name: &str, value: f64, unit: &'static str) -> f64 {
        self.figures.insert(name.to_owned(), Figure { value, unit });
        value
    }

    /// Records `numerator / denominator` (0 when the denominator is 0, so the
    /// JSON always holds a number) and returns it.
    pub fn ratio(&mut self, name: &str, numerator: f64, denominator: f64) -> f64 {
        let value = if denominator > 0.0 {
            crate::procfs::round(numerator / denominator, 3)
        } else {
            0.0
        };
        self.ratios.insert(
            name.to_owned(),
            Figure {
                value,
                unit: "ratio",
            },
        );
        value
    }

    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn failed(title: &str, error: &anyhow::Error) -> Phase {
        Phase {
            title: title.to_owned(),
            status: "failed".into(),
            error: Some(format!("{error:#}")),
            ..Phase::default()
        }
    }
}

impl Report {
    pub fn write_json(&self, out_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
        let path = out_dir.join(format!("{}.json", self.date));
        let mut text = serde_json::to_string_pretty(self).context("serializing the report")?;
        text.push('\n');
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The table, in Markdown, with a line about the run above it.
    pub fn table(&self) -> String {
        let load = |l: [f64; 3]| format!("{:.2} / {:.2} / {:.2}", l[0], l[1], l[2]);
        let mut out = String::new();
        out.push_str(&format!(
            "Run of {} ({} mode), commit `{}`{}; {} × {}, {:.1} GiB; load average (1/5/15 min) \
             {} at the start, {} at the end.\n\n",
            self.date,
            self.mode,
            short(&self.git.commit),
            if self.git.dirty {
                " with uncommitted changes"
            } else {
                ""
            },
            self.machine.cores,
            self.machine.cpu_model,
            self.machine.memory_bytes as f64 / (1u64 << 30) as f64,
            load(self.machine.load_average_start),
            load(self.machine.load_average_end),
        ));
        if !self.machine.quiet_at_start {
            out.push_str(&format!(
                "**The machine was not quiet** (load average {:.2} ≥ {:.1} at the start): other \
                 work competed for the cores, so the figures are noisier than usual.\n\n",
                self.machine.load_average_start[0],
                crate::procfs::QUIET_LOAD
            ));
        }
        out.push_str(
            "| phase | measured | value | against | ratio | CPU during the measurement (cores) |\n",
        );
        out.push_str("|---|---|---|---|---|---|\n");
        for phase in self.phases.values() {
            if let Some(error) = &phase.error {
                out.push_str(&format!(
                    "| {} | **failed** | {} | | | |\n",
                    phase.title,
                    cell(error)
                ));
                continue;
            }
            for (n, row) in phase.rows.iter().enumerate() {
                let title = if n == 0 { phase.title.as_str() } else { "" };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    title,
                    cell(&row.measure),
                    cell(&row.value),
                    cell(&row.baseline),
                    cell(&row.ratio),
                    cell(&row.cpu)
                ));
            }
        }
        out
    }

    /// Replaces the table between the markers of `docs`, or creates the page
    /// with only the table when it does not exist yet.
    pub fn write_table(&self, docs: &Path) -> anyhow::Result<()> {
        let table = self.table();
        let page = match fs::read_to_string(docs) {
            Ok(page) => replace_between_markers(&page, &table).with_context(|| {
                format!(
                    "{} must contain the lines {TABLE_START:?} and {TABLE_END:?}",
                    docs.display()
                )
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                format!("# Benchmarks\n\n{TABLE_START}\n{table}{TABLE_END}\n")
            }
            Err(error) => return Err(error).with_context(|| format!("reading {}", docs.display())),
        };
        if let Some(dir) = docs.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(docs, page).with_context(|| format!("writing {}", docs.display()))
    }
}

/// `page` with the text between the marker lines replaced by `table`;
/// `None` when a marker is missing or they are out of order.
pub fn replace_between_markers(page: &str, table: &str) -> Option<String> {
    let start = page.find(TABLE_START)? + TABLE_START.len();
    let end = start + page[start..].find(TABLE_END)?;
    Some(format!("{}\n{table}{}", &page[..start], &page[end..]))
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// `12345.6` → `"12,346"`; small numbers keep a decimal or two.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.abs() >= 100.0 {
        let digits = format!("{:.0}", value.abs());
        let mut grouped = String::new();
        for (n, digit) in digits.chars().enumerate() {
            if n > 0 && (digits.len() - n) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if value < 0.0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_replaces_only_what_lies_between_the_markers() {
        let page = format!("# B\n\nintro\n\n{TABLE_START}\nold\n{TABLE_END}\n\n## Notes\nkept\n");
        let new = replace_between_markers(&page, "| new |\n").unwrap();
        assert_eq!(
            new,
            format!("# B\n\nintro\n\n{TABLE_START}\n| new |\n{TABLE_END}\n\n## Notes\nkept\n")
        );
        assert_eq!(replace_between_markers("no markers", "x"), None);
        assert_eq!(
            replace_between_markers(&format!("{TABLE_END}\n{TABLE_START}"), "x"),
            None
        );
    }

    #[test]
    fn numbers_are_grouped_for_reading() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(999.6), "1,000");
        assert_eq!(number(123.0), "123");
        assert_eq!(number(42.26), "42.3");
        assert_eq!(number(0.456), "0.46");
        assert_eq!(number(-2500.0), "-2,500");
    }

    #[test]
    fn a_ratio_over_zero_is_recorded_as_zero() {
        let mut phase = Phase::new("x");
        assert_eq!(phase.ratio("r", 5.0, 0.0), 0.0);
        assert_eq!(phase.ratio("s", 1.0, 4.0), 0.25);
        assert_eq!(phase.ratios["s"].unit, "ratio");
    }
}
