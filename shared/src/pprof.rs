//! pprof profiles (profile.proto, gzipped), what `go tool pprof`, Grafana
//! Pyroscope and Parca read: one sample per counted key, its frames as
//! locations with function names, task names as labels. The messages are
//! declared here with prost's derive (only the fields we write, with
//! profile.proto's numbers), so no protoc is needed to build.

use crate::stacks::Stack;
use flate2::{write::GzEncoder, Compression};
use prost::Message;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The frame that joins a waker's stack to its sleeper's, as `--` does in
/// folded stacks.
pub const SEPARATOR: &str = "--";

mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// One frame of a sample: the name the tool's text output shows, and the
/// address it was captured at (0 when there is none, e.g. the separator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub name: String,
    pub addr: u64,
}

impl Loc {
    pub fn separator() -> Loc {
        Loc { name: SEPARATOR.to_string(), addr: 0 }
    }
}

/// A stack's frames, innermost first, named exactly as [`Stack::names`]
/// prints them (so a failed capture is its `[Missed ...]` frame).
pub fn locations(stack: &Stack, kernel: bool) -> Vec<Loc> {
    let addrs: Vec<u64> = match stack {
        Stack::Frames(f) => f.iter().map(|f| f.addr).collect(),
        _ => vec![],
    };
    stack
        .names(kernel)
        .into_iter()
        .enumerate()
        .map(|(i, name)| Loc { name, addr: addrs.get(i).copied().unwrap_or(0) })
        .collect()
}

/// A profile being assembled.
pub struct Profile {
    p: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<String, u64>,
    locations: HashMap<(u64, u64), u64>,
    started: SystemTime,
}

impl Profile {
    /// `types` are (type, unit) pairs such as ("blocked", "nanoseconds");
    /// `default` is the one viewers show first.
    pub fn new(types: &[(&str, &str)], default: &str, started: SystemTime) -> Self {
        let mut prof = Profile {
            p: proto::Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            started,
        };
        prof.string(""); // string_table[0] must be ""
        for (t, u) in types {
            let vt = proto::ValueType { r#type: prof.string(t), unit: prof.string(u) };
            prof.p.sample_type.push(vt);
        }
        prof.p.default_sample_type = prof.string(default);
        prof
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn location(&mut self, loc: &Loc) -> u64 {
        let function = match self.functions.get(&loc.name) {
            Some(&id) => id,
            None => {
                let id = self.p.function.len() as u64 + 1;
                let name = self.string(&loc.name);
                self.p.function.push(proto::Function { id, name, system_name: name, filename: 0 });
                self.functions.insert(loc.name.clone(), id);
                id
            }
        };
        *self.locations.entry((loc.addr, function)).or_insert_with(|| {
            let id = self.p.location.len() as u64 + 1;
            self.p.location.push(proto::Location {
                id,
                address: loc.addr,
                line: vec![proto::Line { function_id: function }],
            });
            id
        })
    }

    /// One sample: `frames` leaf first, one value per type.
    pub fn add(&mut self, frames: &[Loc], values: &[i64], labels: &[(&str, &str)]) {
        assert_eq!(values.len(), self.p.sample_type.len(), "one value per sample type");
        let location_id = frames.iter().map(|f| self.location(f)).collect();
        let label = labels.iter().map(|(k, v)| proto::Label { key: self.string(k), str: self.string(v) }).collect();
        self.p.sample.push(proto::Sample { location_id, value: values.to_vec(), label });
    }

    /// Encode, gzip and write the profile, which covers `duration`.
    pub fn write(mut self, file: File, duration: Duration) -> std::io::Result<()> {
        self.p.time_nanos = self.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
        self.p.duration_nanos = duration.as_nanos() as i64;
        let mut gz = GzEncoder::new(BufWriter::new(file), Compression::default());
        gz.write_all(&self.p.encode_to_vec())?;
        gz.finish()?.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::Frame;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn decode(path: &std::path::Path) -> proto::Profile {
        let mut raw = Vec::new();
        GzDecoder::new(File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
        proto::Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn strings_functions_and_locations_are_shared() {
        let mut p = Profile::new(&[("calls", "count")], "calls", UNIX_EPOCH + Duration::from_secs(10));
        let a = Loc { name: "do_fsync".into(), addr: 0xffff_0010 };
        let b = Loc { name: "do_fsync".into(), addr: 0xffff_0020 };
        p.add(&[a.clone(), Loc::separator()], &[3], &[("comm", "dd")]);
        p.add(&[a, b], &[4], &[("comm", "dd")]);
        let path = std::env::temp_dir().join(format!("kdiag-pprof-{}.pb.gz", std::process::id()));
        p.write(File::create(&path).unwrap(), Duration::from_secs(2)).unwrap();
        let d = decode(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.function.len(), 2, "do_fsync once, the separator once");
        assert_eq!(d.location.len(), 3, "two addresses of do_fsync, the separator");
        assert_eq!(d.sample[0].location_id, [1, 2]);
        assert_eq!(d.sample[1].location_id, [1, 3]);
        assert_eq!(d.sample[1].value, [4]);
        let s = |i: i64| d.string_table[i as usize].as_str();
        assert_eq!((s(d.sample[0].label[0].key), s(d.sample[0].label[0].str)), ("comm", "dd"));
        assert_eq!(s(d.default_sample_type), "calls");
        assert_eq!((d.time_nanos, d.duration_nanos), (10_000_000_000, 2_000_000_000));
    }

    #[test]
    fn locations_name_frames_as_the_text_does() {
        let st = Stack::Frames(vec![
            Frame { addr: 0x10, sym: Some("ksys_write".into()), off: 4, module: None },
            Frame { addr: 0x20, sym: None, off: 0, module: None },
        ]);
        let l = locations(&st, true);
        assert_eq!(l, [Loc { name: "ksys_write".into(), addr: 0x10 }, Loc { name: "[unknown]".into(), addr: 0x20 }]);
        let failed = locations(&Stack::Failed(crate::Errno(libc::EEXIST)), true);
        assert_eq!(failed, [Loc { name: "[Missed Kernel Stack: EEXIST]".into(), addr: 0 }]);
        assert!(locations(&Stack::NotTaken, false).is_empty());
    }
}
