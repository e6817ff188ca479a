//! Flame graph SVGs from folded stack lines (`frame;frame;frame COUNT`),
//! written in-process with inferno, so a box without perl or
//! flamegraph.pl still gets its picture.

use std::fs::File;
use std::io::{BufWriter, Write};

/// What the graph is called and what its widths count.
#[derive(Clone, Debug)]
pub struct Labels {
    pub title: String,
    pub subtitle: Option<String>,
    /// The unit of the counts, e.g. "us" or "calls".
    pub count_name: String,
}

/// One frame name made safe for a folded line: ';' separates frames and
/// the last space separates the count, so neither may appear in a name
/// in a way that changes the line's meaning.
pub fn folded_frame(name: &str) -> String {
    name.replace(';', ":").replace('\n', " ")
}

/// Write `lines` (folded stacks) as an SVG flame graph into `file`.
pub fn write_svg(file: File, labels: &Labels, lines: &[String]) -> anyhow::Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = labels.title.clone();
    opts.subtitle = labels.subtitle.clone();
    opts.count_name = labels.count_name.clone();
    let mut w = BufWriter::new(file);
    if lines.is_empty() {
        // inferno refuses empty input; an SVG that says so beats a 0-byte file.
        write!(
            w,
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"60\" \
             xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"30\">{}: nothing recorded</text></svg>\n",
            escape(&opts.title)
        )?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut w)?;
    }
    w.flush()?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(lines: &[String]) -> String {
        let path = std::env::temp_dir().join(format!("kdiag-flame-{}-{}.svg", std::process::id(), lines.len()));
        let labels = Labels { title: "T <1>".into(), subtitle: Some("sub".into()), count_name: "calls".into() };
        write_svg(File::create(&path).unwrap(), &labels, lines).unwrap();
        let doc = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        doc
    }

    #[test]
    fn graph_holds_the_frames() {
        let doc = render(&["a;b;c 3".into(), "a;d 1".into()]);
        assert!(doc.starts_with("<?xml") && doc.trim_end().ends_with("</svg>"));
        assert!(doc.contains(">c<") || doc.contains("c (3 calls"), "{doc}");
        assert!(doc.contains("calls"));
    }

    #[test]
    fn empty_input_still_gives_an_svg() {
        let doc = render(&[]);
        assert!(doc.contains("T &lt;1&gt;: nothing recorded</text></svg>"), "{doc}");
    }

    #[test]
    fn frame_names_cannot_break_lines() {
        assert_eq!(folded_frame("a;b\nc"), "a:b c");
    }
}
