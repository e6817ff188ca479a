//! The host tests' workload, compiled by the tests with frame pointers:
//! sleeps of known length with known wakers.
//!
//! `workload SLEEP_MS ROUNDS`: prints "ready", waits for a line on stdin,
//! then for ROUNDS rounds the thread `owt-writer` sleeps SLEEP_MS in
//! nanosleep (woken by the timer interrupt) and writes one byte to a pipe
//! that the thread `owt-reader` is blocked reading (woken by the writer).
//! Prints "done" and waits for stdin to close before exiting, so that the
//! tracer can still read its memory maps.

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

#[inline(never)]
fn pipe_reader_blocks(mut r: std::io::PipeReader, rounds: u32) -> Duration {
    let mut byte = [0u8; 1];
    let start = Instant::now();
    for _ in 0..rounds {
        r.read_exact(&mut byte).unwrap();
    }
    start.elapsed()
}

#[inline(never)]
fn pipe_writer_wakes(mut w: std::io::PipeWriter, sleep: Duration, rounds: u32) -> Duration {
    let mut slept = Duration::ZERO;
    for _ in 0..rounds {
        let t = Instant::now();
        std::thread::sleep(sleep);
        slept += t.elapsed();
        w.write_all(b"x").unwrap();
    }
    slept
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sleep = Duration::from_millis(args[1].parse().unwrap());
    let rounds: u32 = args[2].parse().unwrap();
    let (r, w) = std::io::pipe().unwrap();
    println!("ready");
    let stdin = std::io::stdin();
    let mut line = String::new();
    stdin.lock().read_line(&mut line).unwrap();
    let reader =
        std::thread::Builder::new().name("owt-reader".into()).spawn(move || pipe_reader_blocks(r, rounds)).unwrap();
    // Let the reader block before the first round starts.
    std::thread::sleep(Duration::from_millis(20));
    let writer = std::thread::Builder::new()
        .name("owt-writer".into())
        .spawn(move || pipe_writer_wakes(w, sleep, rounds))
        .unwrap();
    let slept = writer.join().unwrap();
    let read = reader.join().unwrap();
    // The writer's measured sleeps: what the reader was blocked for, give
    // or take one write.
    println!("done slept_ns={} read_ns={}", slept.as_nanos(), read.as_nanos());
    let mut rest = Vec::new();
    let _ = stdin.lock().read_to_end(&mut rest);
}
