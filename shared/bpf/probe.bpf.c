// SPDX-License-Identifier: GPL-2.0
/* One tiny program per attach mechanism. The backend ladder loads and
 * attaches exactly one of them to learn whether this kernel really
 * supports that mechanism; BTF and config files can say a feature exists
 * while the kernel still refuses it. (fentry and tp_btf are probed without
 * an object: shared/src/probe.rs.) */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("kprobe.multi/vfs_read")
int kd_probe_kmulti(void *ctx) { return 0; }

SEC("kprobe/vfs_read")
int kd_probe_kprobe(void *ctx) { return 0; }

SEC("raw_tp/sched_switch")
int kd_probe_raw_tp(void *ctx) { return 0; }

SEC("tracepoint/sched/sched_switch")
int kd_probe_tp(void *ctx) { return 0; }

SEC("perf_event")
int kd_probe_perf(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";
