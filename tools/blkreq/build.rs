fn main() {
    kdiag_bpf_build::skeleton("src/bpf/blkreq.bpf.c", "blkreq");
}
