//! Storage for BPF skeletons. A libbpf-rs skeleton borrows the memory its
//! object lives in for as long as it lives. A tool with one object keeps
//! that memory on its stack; one that opens several (a backend ladder
//! that loads for real at each rung, fentry objects one per group of
//! functions) takes a slot for each from a [`Storage`], which owns them
//! all and outlives every skeleton that borrows from it.

use libbpf_rs::OpenObject;
use std::mem::MaybeUninit;

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
