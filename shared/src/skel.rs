//! Storage for BPF skeletons. A libbpf-rs skeleton borrows the memory its
//! object lives in for as long as it lives. A tool with one object keeps
//! that memory on its stack; one that opens several (a backend ladder
//! that loads for real at each rung, fentry objects one per group of
//! functions) takes a slot for each from a [`Storage`], which owns them
//! all and outlives every skeleton that borrows from it.

use anyhow::Context as _;
use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::OpenObject;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;

/// Open a skeleton, its CO-RE relocations against `--btf` when given.
pub fn open<'obj, B: SkelBuilder<'obj>>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
) -> anyhow::Result<B::Output> {
    let custom = crate::btf::custom().map(|p| std::ffi::CString::new(p.as_os_str().as_bytes())).transpose()?;
    let opts = libbpf_rs::libbpf_sys::bpf_object_open_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_object_open_opts>() as _,
        // libbpf keeps a copy of the path.
        btf_custom_path: custom.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        ..Default::default()
    };
    builder.open_opts(opts, storage).context("opening the BPF object")
}

#[derive(Default)]
pub struct Storage(typed_arena::Arena<MaybeUninit<OpenObject>>);

impl Storage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Memory for one more object, kept until the storage is dropped.
    #[allow(clippy::mut_from_ref)]
    pub fn slot(&self) -> &mut MaybeUninit<OpenObject> {
        self.0.alloc(MaybeUninit::uninit())
    }
}
