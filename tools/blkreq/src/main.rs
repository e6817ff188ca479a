//! blkreq: follow block requests through every kernel function. Not written yet
//! (issue 5); this member exists so the workspace has its final shape.

fn main() {
    eprintln!("blkreq: not implemented yet");
    std::process::exit(2);
}
