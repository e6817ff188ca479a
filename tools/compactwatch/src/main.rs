//! compactwatch: explain high-order allocation stalls and failures. Not written yet
//! (issue 7); this member exists so the workspace has its final shape.

fn main() {
    eprintln!("compactwatch: not implemented yet");
    std::process::exit(2);
}
