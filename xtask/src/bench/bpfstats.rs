//! The kernel's own accounting of a process's BPF programs, ours or a
//! peer's alike: with kernel.bpf_stats_enabled=1 each program's fdinfo
//! carries run_time_ns and run_cnt. fdinfo has the program's id but not
//! its name, so the name comes from the bpf(2) syscall by that id.

use std::collections::BTreeMap;

/// One program's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prog {
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
}

/// Every BPF program `pid` holds an fd to, by program id (a program held
/// twice counts once). Programs that share a name (bpftrace's are named
/// after the probe type, cut to 15 bytes) are told apart as name#1,
/// name#2... in the order they were loaded, which is the same from one
/// run to the next.
pub fn snapshot(pid: u32) -> BTreeMap<u32, Prog> {
    let mut progs = raw_snapshot(pid);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for p in progs.values() {
        *seen.entry(p.name.clone()).or_default() += 1;
    }
    let mut nth: BTreeMap<String, usize> = BTreeMap::new();
    // Ids are handed out in load order.
    for p in progs.values_mut() {
        if seen[&p.name] > 1 {
            let k = nth.entry(p.name.clone()).or_default();
            *k += 1;
            p.name = format!("{}#{k}", p.name);
        }
    }
    progs
}

fn raw_snapshot(pid: u32) -> BTreeMap<u32, Prog> {
    let mut progs = BTreeMap::new();
    for info in fdinfos(pid) {
        let Some(id) = field(&info, "prog_id:") else { continue };
        // A link's fdinfo names its program's id too, but has no counters.
        let (Some(run_ns), Some(runs)) = (field(&info, "run_time_ns:"), field(&info, "run_cnt:")) else {
            continue;
        };
        let id = id as u32;
        let name = progs
            .get(&id)
            .map_or_else(|| prog_name(id).unwrap_or_else(|| format!("id {id}")), |p: &Prog| p.name.clone());
        progs.insert(id, Prog { name, run_ns, runs });
    }
    progs
}

/// What ran between two snapshots of one process, by program name
/// (summed over programs of one name), added to `into`.
pub fn add_delta(into: &mut BTreeMap<String, (u64, u64)>, before: &BTreeMap<u32, Prog>, after: &BTreeMap<u32, Prog>) {
    for (id, p) in after {
        let (t0, n0) = before.get(id).map_or((0, 0), |b| (b.run_ns, b.runs));
        let e = into.entry(p.name.clone()).or_default();
        e.0 += p.run_ns.saturating_sub(t0);
        e.1 += p.runs.saturating_sub(n0);
    }
}

/// How many BPF links `pid` holds (raw tracepoint, perf, kprobe-multi...:
/// an attached program, as libbpf attaches them).
pub fn links(pid: u32) -> usize {
    fdinfos(pid).filter(|info| info.lines().any(|l| l.starts_with("link_type:"))).count()
}

fn fdinfos(pid: u32) -> impl Iterator<Item = String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten();
    fds.filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
}

fn field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// The leading fields of the kernel's struct bpf_prog_info
/// (include/uapi/linux/bpf.h), up to and including the name; the kernel
/// fills no more than the length it is given. Only `name` is read: the
/// rest is there for its place.
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The program's name as loaded (at most 15 bytes), by its id.
fn prog_name(id: u32) -> Option<String> {
    // union bpf_attr, zeroed beyond the fields each command reads.
    let mut attr = [0u32; 32];
    attr[0] = id; // prog_id
                  // SAFETY: bpf(2) reads `attr` (128 bytes, zeroed past prog_id).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_ptr(), 128) };
    if fd < 0 {
        return None;
    }
    let mut info = ProgInfo::default();
    let mut attr = [0u32; 32];
    attr[0] = fd as u32; // info.bpf_fd
    attr[1] = std::mem::size_of::<ProgInfo>() as u32; // info.info_len
    let ptr = &mut info as *mut ProgInfo as u64;
    attr[2] = ptr as u32; // info.info, a u64 at offset 8
    attr[3] = (ptr >> 32) as u32;
    // SAFETY: the kernel writes at most info_len bytes to `info`, which
    // outlives the call; fd is ours and closed after.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_ptr(), 128) };
    // SAFETY: fd was returned to us above.
    unsafe { libc::close(fd as i32) };
    if rc != 0 {
        return None;
    }
    let len = info.name.iter().position(|&b| b == 0).unwrap_or(info.name.len());
    Some(String::from_utf8_lossy(&info.name[..len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prog_info_prefix_has_the_kernel_layout() {
        // name follows map_ids at offset 64 in struct bpf_prog_info.
        assert_eq!(std::mem::size_of::<ProgInfo>(), 80);
    }

    #[test]
    fn delta_sums_programs_of_one_name() {
        let p = |name: &str, run_ns, runs| Prog { name: name.into(), run_ns, runs };
        let before = BTreeMap::from([(1, p("a", 10, 1)), (2, p("a", 0, 0))]);
        let after = BTreeMap::from([(1, p("a", 30, 3)), (2, p("a", 5, 1)), (3, p("b", 7, 1))]);
        let mut d = BTreeMap::new();
        add_delta(&mut d, &before, &after);
        assert_eq!(d, BTreeMap::from([("a".to_string(), (25, 3)), ("b".to_string(), (7, 1))]));
    }
}
