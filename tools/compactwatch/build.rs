fn main() {
    kdiag_bpf_build::skeleton("src/bpf/compactwatch.bpf.c", "compactwatch");
}
