fn main() {
    kdiag_bpf_build::skeleton("src/bpf/offwaketime.bpf.c", "offwaketime");
}
