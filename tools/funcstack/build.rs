fn main() {
    kdiag_bpf_build::skeleton("src/bpf/funcstack.bpf.c", "funcstack");
}
