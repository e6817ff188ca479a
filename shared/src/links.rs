//! Attached programs, detached all at once. Closing a tracepoint's perf
//! event or a kprobe waits for RCU grace periods in the kernel (80-100 ms
//! each on this VM idle, 250-300 ms loaded, measured for epollwake's
//! syscall tracepoints): thirty links closed one after another take
//! seconds. Closed each from a thread of its own, the waits overlap and the
//! whole detach takes about one.

use libbpf_rs::Link;

/// Most threads one detach uses: beyond this, links share a thread.
const DETACH_THREADS: usize = 64;

#[derive(Default)]
pub struct Links(Vec<Link>);

impl Links {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, link: Link) {
        self.0.push(link);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Detach everything now (also what dropping does).
    pub fn detach(&mut self) {
        let mut links = std::mem::take(&mut self.0);
        if links.len() < 2 {
            return;
        }
        let per = links.len().div_ceil(DETACH_THREADS);
        std::thread::scope(|s| {
            while !links.is_empty() {
                let batch: Vec<Link> = links.drain(..per.min(links.len())).collect();
                s.spawn(move || drop(batch));
            }
        });
    }
}

impl Extend<Link> for Links {
    fn extend<I: IntoIterator<Item = Link>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.detach();
    }
}
