fn main() {
    kdiag_bpf_build::skeleton("src/bpf/epollwake.bpf.c", "epollwake");
}
