fn main() {
    kdiag_bpf_build::skeleton("bpf/probe.bpf.c", "probe");
}
