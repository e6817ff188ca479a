//! Every tool's `build.rs` is one call to [`skeleton`], so all BPF C is
//! compiled the same way against the same `vmlinux.h` and common headers.

use std::{env, path::PathBuf};

/// Directory holding `vmlinux.h` and the BPF headers every tool shares.
pub fn include_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bpf")
}

/// Compile `src` (relative to the calling crate) and write
/// `$OUT_DIR/<name>.skel.rs`, to be pulled in with `include!`.
pub fn skeleton(src: &str, name: &str) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join(format!("{name}.skel.rs"));
    let inc = include_dir();
    libbpf_cargo::SkeletonBuilder::new()
        .source(src)
        .clang_args([format!("-I{}", inc.display()), "-Wall".to_string(), "-Wno-unused-function".to_string()])
        .build_and_generate(&out)
        .unwrap_or_else(|e| panic!("compiling {src}: {e:#}"));
    let src_dir = PathBuf::from(src).parent().map(PathBuf::from).unwrap_or_default();
    println!("cargo:rerun-if-changed={}", src_dir.display());
    println!("cargo:rerun-if-changed={}", inc.display());
}
