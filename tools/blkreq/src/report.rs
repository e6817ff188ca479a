//! The end-of-run summary: what was tracked, and everything that was lost
//! or refused, so a quiet tree is never mistaken for a quiet disk.

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub duration_s: f64,
    pub stop_reason: String,
    pub requests: u64,
    pub completed: u64,
    pub steps: u64,
    /// Steps on tracked requests the kernel saw (hits) minus emitted.
    pub steps_lost: u64,
    pub stack_failed: u64,
    pub filtered: u64,
    /// Requests not admitted because COUNT were already tracked.
    pub not_admitted_full: u64,
    pub admission_races: u64,
    /// Sessions ended because their pointer came back unended.
    pub ended_by_reuse: u64,
    pub late_steps_ignored: u64,
    pub functions_attached: usize,
    pub tracepoints_attached: usize,
    pub attach_ms: u64,
    pub refused: Vec<Refused>,
}

#[derive(Debug, Serialize)]
pub struct Refused {
    pub name: String,
    pub why: String,
}

impl Summary {
    pub fn text(&self) -> String {
        let mut s = format!(
            "blkreq: {} after {:.1} s: {} requests tracked, {} completed, {} steps\n",
            self.stop_reason, self.duration_s, self.requests, self.completed, self.steps
        );
        s.push_str(&format!(
            "blkreq: lost {} steps (full buffer), {} stack captures failed; {} requests filtered out, \
             {} not admitted (COUNT reached), {} ended unseen (pointer reused)\n",
            self.steps_lost, self.stack_failed, self.filtered, self.not_admitted_full, self.ended_by_reuse
        ));
        if !self.refused.is_empty() {
            let names: Vec<String> = self.refused.iter().map(|r| format!("{} ({})", r.name, r.why)).collect();
            s.push_str(&format!("blkreq: {} refused to attach: {}\n", self.refused.len(), names.join(", ")));
        }
        s
    }
}
