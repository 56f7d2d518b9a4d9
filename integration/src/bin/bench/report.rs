//! Results: one row per measurement, the table, and the JSON file.

use serde::Serialize;

/// A target a figure is checked against.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// `ratio` (tunnel ÷ direct) at most this.
    RatioAtMost(f64),
    /// `ratio` at least this.
    RatioAtLeast(f64),
    /// `ratio` (the scenario's own figure) at most this.
    ValueAtMost(f64),
    /// `ratio` (the scenario's own figure) at least this.
    ValueAtLeast(f64),
    /// No target; reported for context.
    Info,
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::RatioAtMost(x) => format!("<= {x}x"),
            Goal::RatioAtLeast(x) => format!(">= {x}x"),
            Goal::ValueAtMost(x) => format!("<= {x}"),
            Goal::ValueAtLeast(x) => format!(">= {x}"),
            Goal::Info => "info".into(),
        }
    }

    fn met(self, ratio: f64) -> bool {
        match self {
            Goal::RatioAtMost(x) | Goal::ValueAtMost(x) => ratio <= x,
            Goal::RatioAtLeast(x) | Goal::ValueAtLeast(x) => ratio >= x,
            Goal::Info => true,
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Unit of `direct` and `tunnel`.
    pub unit: String,
    /// Direct path figure (null where there is none).
    pub direct: Option<f64>,
    /// Tunnel path figure.
    pub tunnel: Option<f64>,
    /// Tunnel ÷ direct, or the scenario's own figure.
    pub ratio: Option<f64>,
    /// The target, as text.
    pub target: String,
    /// Whether the target was met (informational rows: true; not measured: false).
    pub met: bool,
    /// Why it was not measured, or what limits it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Row {
    /// A direct-vs-tunnel comparison.
    pub fn compare(name: &str, unit: &str, direct: f64, tunnel: f64, goal: Goal) -> Self {
        let ratio = if direct == 0.0 { f64::NAN } else { tunnel / direct };
        Self::build(name, unit, Some(direct), Some(tunnel), ratio, goal)
    }

    /// A figure of its own (`ratio` holds it), with the direct figure if any.
    pub fn value(name: &str, unit: &str, direct: Option<f64>, tunnel: f64, value: f64, goal: Goal) -> Self {
        Self::build(name, unit, direct, Some(tunnel), value, goal)
    }

    fn build(
        name: &str,
        unit: &str,
        direct: Option<f64>,
        tunnel: Option<f64>,
        ratio: f64,
        goal: Goal,
    ) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            direct,
            tunnel,
            ratio: ratio.is_finite().then_some(ratio),
            target: goal.describe(),
            // An informational row (failures, say, where both paths had
            // none and so no ratio) is never "not met".
            met: matches!(goal, Goal::Info) || (ratio.is_finite() && goal.met(ratio)),
            note: String::new(),
        }
    }

    /// A scenario that could not be measured, and why.
    pub fn not_measured(name: &str, goal: Goal, why: impl std::fmt::Display) -> Self {
        Self {
            name: name.into(),
            unit: "-".into(),
            direct: None,
            tunnel: None,
            ratio: None,
            target: goal.describe(),
            met: false,
            note: format!("not measured: {why}"),
        }
    }

    /// One line for the progress log: figures, ratio and the verdict.
    pub fn progress_line(&self) -> String {
        let verdict = match (self.target.as_str(), self.met) {
            _ if self.note.starts_with("not measured") => format!(" ({})", self.note),
            ("info", _) => String::new(),
            (t, true) => format!(" (target {t}: met)"),
            (t, false) => format!(" (target {t}: NOT met)"),
        };
        format!(
            "{}: direct {} tunnel {} {} ratio {}{verdict}",
            self.name,
            fmt(self.direct),
            fmt(self.tunnel),
            self.unit,
            fmt(self.ratio)
        )
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// One figure of a reference path beside Ferry's, from the same run.
#[derive(Clone, Debug, Serialize)]
pub struct RefRow {
    /// The reference path (`haproxy`, `rathole`).
    pub path: String,
    /// What was measured (as in the scenario rows).
    pub figure: String,
    /// Unit of the figures.
    pub unit: String,
    /// The direct path's figure, where there is one.
    pub direct: Option<f64>,
    /// Ferry's (the tunnel path's) figure.
    pub ferry: f64,
    /// The reference path's figure.
    pub reference: f64,
    /// Ferry ÷ reference (below 1 is better for times and CPU, above 1
    /// for throughput).
    pub ratio: Option<f64>,
}

impl RefRow {
    /// A figure of `path` beside Ferry's.
    pub fn new(
        path: &str,
        figure: &str,
        unit: &str,
        direct: Option<f64>,
        ferry: f64,
        reference: f64,
    ) -> Self {
        let ratio = ferry / reference;
        Self {
            path: path.into(),
            figure: figure.into(),
            unit: unit.into(),
            direct,
            ferry,
            reference,
            ratio: ratio.is_finite().then_some(ratio),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_rows_are_met_even_without_a_ratio() {
        let none_failed = Row::compare("failed", "requests", 0.0, 0.0, Goal::Info);
        assert_eq!(none_failed.ratio, None);
        assert!(none_failed.met);
        let slow = Row::compare("p50", "ms", 1.0, 2.0, Goal::RatioAtMost(1.3));
        assert_eq!(slow.ratio, Some(2.0));
        assert!(!slow.met);
        let no_direct = Row::compare("p50", "ms", 0.0, 2.0, Goal::RatioAtMost(1.3));
        assert!(!no_direct.met, "a target row without a ratio cannot be met");
    }
}

/// Hub and agent resource use over one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    /// The scenario.
    pub scenario: String,
    /// Hub CPU seconds spent during it.
    pub hub_cpu_s: f64,
    /// Agent CPU seconds spent during it.
    pub agent_cpu_s: f64,
    /// Hub RSS at its end, KiB.
    pub hub_rss_kib: u64,
    /// Agent RSS at its end, KiB.
    pub agent_rss_kib: u64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Times the agent reconnected to the hub during it.
    pub agent_reconnects: u64,
}

/// The machine the run was on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs available.
    pub cores: usize,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// CPU model name.
    pub cpu_model: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_bytes: memory_kib * 1024,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model,
        }
    }
}

/// Everything the `--json` file holds.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// Wall-clock seconds of the whole run.
    pub duration_s: f64,
    /// One object per scenario and sub-measurement.
    pub scenarios: Vec<Row>,
    /// Hub and agent CPU and memory per scenario.
    pub usage: Vec<Usage>,
    /// Peak RSS over the run, KiB (the hub's across restarts).
    pub hub_peak_rss_kib: u64,
    /// Agent peak RSS, KiB.
    pub agent_peak_rss_kib: u64,
    /// Hub CPU seconds over the run.
    pub hub_cpu_s: f64,
    /// Agent CPU seconds over the run.
    pub agent_cpu_s: f64,
    /// Reference paths' figures beside Ferry's (`--references`).
    pub reference: Vec<RefRow>,
    /// Reference paths skipped, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reference_notes: Vec<String>,
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

impl Report {
    /// The table, as Markdown (it reads fine in a terminal too).
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| scenario | unit | direct | tunnel | ratio | target | met |\n");
        out.push_str("| --- | --- | ---: | ---: | ---: | --- | --- |\n");
        for r in &self.scenarios {
            let met = if r.note.starts_with("not measured") {
                "NOT MEASURED"
            } else if r.target == "info" {
                "-"
            } else if r.met {
                "yes"
            } else {
                "NO"
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.name,
                r.unit,
                fmt(r.direct),
                fmt(r.tunnel),
                fmt(r.ratio),
                r.target,
                met
            ));
        }
        let notes: Vec<_> = self.scenarios.iter().filter(|r| !r.note.is_empty()).collect();
        if !notes.is_empty() {
            out.push('\n');
            for r in notes {
                out.push_str(&format!("- {}: {}\n", r.name, r.note));
            }
        }
        out.push_str("\n| scenario | hub CPU s | agent CPU s | hub RSS MiB | agent RSS MiB | wall s | agent reconnects |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for u in &self.usage {
            out.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |\n",
                u.scenario,
                u.hub_cpu_s,
                u.agent_cpu_s,
                u.hub_rss_kib as f64 / 1024.0,
                u.agent_rss_kib as f64 / 1024.0,
                u.wall_s,
                u.agent_reconnects
            ));
        }
        if !self.reference.is_empty() || !self.reference_notes.is_empty() {
            out.push_str(
                "\n| figure | unit | direct | Ferry | reference | reference figure | Ferry ÷ reference |\n",
            );
            out.push_str("| --- | --- | ---: | ---: | --- | ---: | ---: |\n");
            for r in &self.reference {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    r.figure,
                    r.unit,
                    fmt(r.direct),
                    fmt(Some(r.ferry)),
                    r.path,
                    fmt(Some(r.reference)),
                    fmt(r.ratio)
                ));
            }
            for n in &self.reference_notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out.push_str(&format!(
            "\nhub: peak RSS {:.1} MiB, CPU {:.1} s; agent: peak RSS {:.1} MiB, CPU {:.1} s; run {:.0} s\n",
            self.hub_peak_rss_kib as f64 / 1024.0,
            self.hub_cpu_s,
            self.agent_peak_rss_kib as f64 / 1024.0,
            self.agent_cpu_s,
            self.duration_s
        ));
        out
    }
}
