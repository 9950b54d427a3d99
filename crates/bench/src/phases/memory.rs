//! Phase 6: the peak resident memory (`VmHWM` in `/proc/<pid>/status`) of
//! each service, read at the end of the phases that load it: the API after
//! phase 1, the consumer after phase 3 (and, for reference, the API after
//! phase 4's backlog, the two consumers of phase 5, nsqd). Each process was
//! started for its phase, so the peak is that phase's.

use anyhow::bail;

use crate::report::{Phase, Row};
use crate::Findings;

pub const TITLE: &str = "6. Peak memory (RSS)";

/// The figures the phase is about; the others are extras.
const REQUIRED: [&str; 2] = ["accounts_api_during_1", "audit_consumer_during_3"];

pub fn run(findings: &Findings) -> anyhow::Result<Phase> {
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|name| !findings.peak_rss.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        bail!(
            "no peak RSS for {} (their phases failed)",
            missing.join(", ")
        );
    }
    let mut phase = Phase::new(TITLE);
    // The required ones first, in the order of the issue.
    let mut names: Vec<&String> = findings.peak_rss.keys().collect();
    names.sort_by_key(|name| (!REQUIRED.contains(&name.as_str()), name.as_str()));
    for name in names {
        let (bytes, during) = &findings.peak_rss[name];
        let mib = phase.figure(&format!("{name}_peak_rss"), super::mib(*bytes), "MiB");
        phase.row(Row {
            measure: during.clone(),
            value: format!("{mib:.1} MiB"),
            ..Row::default()
        });
    }
    Ok(phase)
}
