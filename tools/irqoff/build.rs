fn main() {
    kdiag_bpf_build::skeleton("src/bpf/irqoff.bpf.c", "irqoff");
    // Only the host tests use this one: it makes real irq-off windows.
    kdiag_bpf_build::skeleton("tests/bpf/inject.bpf.c", "inject");
}
