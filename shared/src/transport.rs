//! Event transport from BPF to userspace: a BPF ring buffer where the
//! kernel has one (5.8+), a perf event array otherwise. The BPF half is
//! `bpf/kdiag.bpf.h` (`KD_CHANNEL`, `kd_reserve`, `kd_submit`).
//!
//! Losses are counted on both paths: a failed ring buffer reservation is
//! counted by the BPF program (it knows, userspace does not), a perf buffer
//! overrun is reported to us by the kernel and counted here.

use crate::maps::{decode, Plain};
use anyhow::Context as _;
use libbpf_rs::{Map, MapCore, MapType, OpenMapMut, PerfBuffer, PerfBufferBuilder, RingBuffer, RingBufferBuilder};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    RingBuf,
    PerfBuf,
}

impl Kind {
    /// The ring buffer if this kernel can create one. `KDIAG_TRANSPORT=perf`
    /// forces the perf buffer, the path of kernels before 5.8, so that it
    /// can be tested (and compared) on new ones.
    pub fn detect() -> Self {
        if std::env::var_os("KDIAG_TRANSPORT").is_some_and(|v| v == "perf") {
            return Kind::PerfBuf;
        }
        match MapType::RingBuf.is_supported() {
            Ok(true) => Kind::RingBuf,
            _ => Kind::PerfBuf,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::RingBuf => "ring buffer",
            Kind::PerfBuf => "perf buffer",
        }
    }

    /// Before load: of one channel's `_ring` and `_perf` maps, keep only
    /// the one of this kind. The BPF flag `kd_use_ringbuf` must be set to
    /// match by the caller (it lives in the tool's own rodata).
    pub fn configure<'o>(self, ring: &mut OpenMapMut<'o>, perf: &mut OpenMapMut<'o>) -> anyhow::Result<()> {
        let unused = if self == Kind::RingBuf { perf } else { ring };
        unused.set_autocreate(false).context("configuring the event transport")
    }
}

/// Receives events from one or more channels into one handler.
pub struct EventStream<'cb> {
    ring: Option<RingBuffer<'cb>>,
    perf: Vec<PerfBuffer<'cb>>,
    lost: Rc<Cell<u64>>,
}

impl<'cb> EventStream<'cb> {
    /// `channels` pairs each channel's ring and perf maps, as loaded.
    pub fn open<'m, F>(kind: Kind, channels: &[(&'m Map<'m>, &'m Map<'m>)], handler: F) -> anyhow::Result<Self>
    where
        F: FnMut(&[u8]) + 'cb,
        'm: 'cb,
    {
        let handler = Rc::new(RefCell::new(handler));
        let lost = Rc::new(Cell::new(0u64));
        let err = |e: libbpf_rs::Error| anyhow::anyhow!("opening the event {}: {e}", kind.name());
        match kind {
            Kind::RingBuf => {
                let mut b = RingBufferBuilder::new();
                for (ring, _) in channels {
                    let h = handler.clone();
                    b.add(*ring as &dyn MapCore, move |data: &[u8]| {
                        (h.borrow_mut())(data);
                        0
                    })
                    .map_err(err)?;
                }
                Ok(EventStream { ring: Some(b.build().map_err(err)?), perf: vec![], lost })
            }
            Kind::PerfBuf => {
                let mut perf = Vec::new();
                for (_, pmap) in channels {
                    let h = handler.clone();
                    let l = lost.clone();
                    let pb = PerfBufferBuilder::new(*pmap)
                        .sample_cb(move |_cpu, data: &[u8]| (h.borrow_mut())(data))
                        .lost_cb(move |_cpu, n| l.set(l.get() + n))
                        .build()
                        .map_err(err)?;
                    perf.push(pb);
                }
                Ok(EventStream { ring: None, perf, lost })
            }
        }
    }

    /// Deliver what is pending, waiting up to `timeout` for the first
    /// event. An interrupting signal is not an error: the caller's loop
    /// checks why it woke up.
    pub fn poll(&self, timeout: Duration) -> anyhow::Result<()> {
        let ok_if_interrupted = |r: libbpf_rs::Result<()>| match r {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => Ok(()),
            other => other.context("reading events"),
        };
        if let Some(rb) = &self.ring {
            return ok_if_interrupted(rb.poll(timeout));
        }
        for (i, pb) in self.perf.iter().enumerate() {
            ok_if_interrupted(pb.poll(if i == 0 { timeout } else { Duration::ZERO }))?;
        }
        Ok(())
    }

    /// Events the kernel dropped because a perf buffer was full.
    pub fn lost(&self) -> u64 {
        self.lost.get()
    }
}

/// Records of one type from one or more channels, decoded as they come
/// and kept until the tool takes them: the usual way to read events.
pub struct Inbox<'cb, T> {
    stream: EventStream<'cb>,
    queue: Rc<RefCell<Vec<T>>>,
}

/// Decode a record of a plain-data skeleton type; a short one is dropped.
pub fn record<T: Plain + Default>(data: &[u8]) -> Option<T> {
    decode(data)
}

impl<'cb, T: 'cb> Inbox<'cb, T> {
    /// `decode` turns a record's bytes into a `T` ([`record`] for a plain
    /// skeleton type); records it refuses are dropped.
    pub fn open<'m>(
        kind: Kind,
        channels: &[(&'m Map<'m>, &'m Map<'m>)],
        decode: fn(&[u8]) -> Option<T>,
    ) -> anyhow::Result<Self>
    where
        'm: 'cb,
    {
        let queue: Rc<RefCell<Vec<T>>> = Rc::default();
        let q = queue.clone();
        let stream = EventStream::open(kind, channels, move |data: &[u8]| {
            if let Some(v) = decode(data) {
                q.borrow_mut().push(v);
            }
        })?;
        Ok(Inbox { stream, queue })
    }

    /// Wait up to `timeout` for records, and take all that are in.
    pub fn poll(&self, timeout: Duration) -> anyhow::Result<Vec<T>> {
        self.stream.poll(timeout)?;
        Ok(std::mem::take(&mut *self.queue.borrow_mut()))
    }

    /// Records the kernel dropped because a perf buffer was full.
    pub fn lost(&self) -> u64 {
        self.stream.lost()
    }
}
