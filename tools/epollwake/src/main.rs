//! epollwake: explain each epoll wake-up of a process. Not written yet
//! (issue 6); this member exists so the workspace has its final shape.

fn main() {
    eprintln!("epollwake: not implemented yet");
    std::process::exit(2);
}
