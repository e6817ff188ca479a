fn main() {
    kdiag_bpf_build::skeleton("src/bpf/irqoff.bpf.c", "irqoff");
    kdiag_bpf_build::skeleton("src/bpf/steal.bpf.c", "steal");
    // Only the tests use these: real irq-off windows, and window.h run
    // on the kernel.
    kdiag_bpf_build::skeleton("tests/bpf/inject.bpf.c", "inject");
    kdiag_bpf_build::skeleton("tests/bpf/window_test.bpf.c", "window_test");
}
