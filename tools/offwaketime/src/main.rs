//! offwaketime: off-CPU time by sleeper and waker stacks. Not written yet
//! (issue 4); this member exists so the workspace has its final shape.

fn main() {
    eprintln!("offwaketime: not implemented yet");
    std::process::exit(2);
}
