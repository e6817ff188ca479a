//! What blkreq prints: the tree, timeline, folded lines or JSON of the
//! steps, `--list`, and the end-of-run summary: what was tracked, and
//! everything that was lost or refused, so a quiet tree is never mistaken
//! for a quiet disk.

use crate::cli::Format;
use crate::timeline::Step;
use kdiag_shared::output::Sink;
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
/// The report in the chosen format.
pub fn output(format: Format, steps: &[Step], summary: &Summary) -> anyhow::Result<()> {
    let mut sink = Sink::stdout();
    let mut tree = crate::tree::Tree::default();
    let mut ordered: Vec<&Step> = steps.iter().collect();
    ordered.sort_by_key(|s| s.mono_ns);
    for s in &ordered {
        let (ctx, path) = s.path();
        tree.insert(ctx, &path);
    }
    match format {
        Format::Tree => {
            sink.text(&tree.render())?;
            sink.text("\n")?;
            sink.text(&summary.text())?;
        }
        Format::Folded => {
            sink.text(&tree.folded())?;
            kdiag_shared::lifecycle::say_text(&summary.text());
        }
        Format::Timeline => {
            sink.text(&crate::timeline::render(&crate::timeline::requests(steps)))?;
            sink.text(&summary.text())?;
        }
        Format::Json => {
            for r in crate::timeline::requests(steps) {
                sink.json(&r)?;
            }
            sink.json(&serde_json::json!({"type": "tree", "roots": tree.roots}))?;
            sink.json(summary)?;
        }
    }
    Ok(())
}

/// `--list`: the resolved set, and how each would be attached. Nothing of
/// blkreq's own is loaded; only the backend probe's tiny program is, for
/// an instant, to learn what this kernel accepts.
pub fn list(res: &crate::targets::Resolved, plan: &crate::attach::Plan) -> String {
    let mut out = format!("# {}\n", plan.explain());
    out.push_str(&format!("{:<48} {:<6} {:<24} {}\n", "NAME", "ARG", "METHOD", "ROLE"));
    for t in res.all() {
        let args: Vec<String> = t.site.positions.iter().map(|p| p.to_string()).collect();
        let mut role = t.role_name().to_string();
        if t.role & crate::targets::HIDDEN != 0 {
            role.push_str(" (excluded: tracked, not shown)");
        }
        out.push_str(
            format!("{:<48} {:<6} {:<24} {}\n", t.label(), args.join(","), plan.method_of(t), role).trim_end(),
        );
        out.push('\n');
    }
    let shown = res.all().count();
    let usable = res.all().filter(|t| t.skip.is_none()).count();
    out.push_str(&format!("# {shown} listed, {usable} attachable\n"));
    out
}
