// SPDX-License-Identifier: GPL-2.0
/*
 * kdiag_test: deterministic faults for kdiag's guest-kernel tests.
 *
 * Every knob is a module parameter under /sys/module/kdiag_test/parameters/.
 * Writing a trigger parameter does the work before the write returns, so a
 * test knows exactly when a fault started and ended.
 *
 * Interrupts off (for irqoff):
 *   irqoff_cpu      CPU to run on (default 0)
 *   irqoff_ms       write N: disable interrupts on irqoff_cpu for N ms
 *   irqoff_last_us  read: how long the last window really was
 *   irqoff_windows  read: windows run so far
 *
 * Memory (for compactwatch):
 *   fragment        write 1: take all free memory down to the min watermark
 *                   as unmovable pages, then give back the pages whose pfn
 *                   has bit 1 clear, so free memory is order-1 blocks that
 *                   cannot merge further; write 0: give everything back.
 *                   What stays free below the min watermark is untouched:
 *                   lower vm.min_free_kbytes first if it could hold a block
 *                   of the order under test. Free HighAtomic pageblocks stay
 *                   too; ordinary allocations cannot use them either.
 *   frag_held       read: pages held by the fragmentation
 *   alloc_order, alloc_count, alloc_gfp ("kernel", "nofs" or "noio",
 *                   optionally followed by ",noretry"; ",warn" leaves out
 *                   __GFP_NOWARN, so a failure prints the kernel's "page
 *                   allocation failure" report)
 *   alloc           write 1: allocate alloc_count blocks of alloc_order with
 *                   alloc_gfp, then free them
 *   alloc_ok, alloc_failed  read: results of the last alloc
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/workqueue.h>
#include <linux/timekeeping.h>
#include <linux/cpumask.h>
#include <linux/string.h>
#include <linux/version.h>

/* The largest order the buddy allocator hands out; its name and meaning
 * changed in 6.4 and 6.8. */
#if defined(MAX_PAGE_ORDER)
#define KD_TOP_ORDER MAX_PAGE_ORDER
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define KD_TOP_ORDER MAX_ORDER
#else
#define KD_TOP_ORDER (MAX_ORDER - 1)
#endif

static DEFINE_MUTEX(kd_lock);

/* ---- interrupts off ---------------------------------------------------- */

static int irqoff_cpu;
module_param(irqoff_cpu, int, 0644);
static unsigned long irqoff_last_us;
module_param(irqoff_last_us, ulong, 0444);
static unsigned long irqoff_windows;
module_param(irqoff_windows, ulong, 0444);

static unsigned int irqoff_pending_ms;

/*
 * The test looks for this name in irqoff's stacks, so it must stay a real,
 * uncloned symbol (noipa: no inlining, no .constprop/.isra copies). The
 * software detector samples on the timer interrupt that was held back, which
 * is taken right after interrupts come back on; the restore and the work
 * after it are here, so that interrupt lands inside this function.
 */
void kdiag_test_irqoff_holder(unsigned int ms);
noinline __attribute__((__noipa__)) void kdiag_test_irqoff_holder(unsigned int ms)
{
	unsigned long flags;
	u64 start, now, deadline;
	int i;

	local_irq_save(flags);
	start = ktime_get_mono_fast_ns();
	deadline = start + (u64)ms * NSEC_PER_MSEC;
	do {
		cpu_relax();
		now = ktime_get_mono_fast_ns();
	} while (now < deadline);
	local_irq_restore(flags);
	/* sti delays interrupts by one instruction; give the held-back
	 * interrupt somewhere in this function to land, so a return cannot
	 * move it into the caller. */
	for (i = 0; i < 64; i++)
		cpu_relax();
	WRITE_ONCE(irqoff_last_us, (unsigned long)div_u64(now - start, NSEC_PER_USEC));
	WRITE_ONCE(irqoff_windows, irqoff_windows + 1);
}

static void irqoff_work_fn(struct work_struct *work)
{
	kdiag_test_irqoff_holder(READ_ONCE(irqoff_pending_ms));
}
static DECLARE_WORK(irqoff_work, irqoff_work_fn);

static int irqoff_ms_set(const char *val, const struct kernel_param *kp)
{
	unsigned int ms;
	int cpu = READ_ONCE(irqoff_cpu);
	int ret = kstrtouint(val, 0, &ms);

	if (ret)
		return ret;
	/* Long enough for any test, short of the soft-lockup detector. */
	if (ms > 5000)
		return -EINVAL;
	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu))
		return -ENODEV;
	mutex_lock(&kd_lock);
	WRITE_ONCE(irqoff_pending_ms, ms);
	/* A work item bound to the CPU runs in an ordinary kworker with
	 * interrupts on, so the window is exactly the one the holder makes. */
	schedule_work_on(cpu, &irqoff_work);
	flush_work(&irqoff_work);
	mutex_unlock(&kd_lock);
	return 0;
}

static const struct kernel_param_ops irqoff_ms_ops = {
	.set = irqoff_ms_set,
	.get = param_get_uint,
};
module_param_cb(irqoff_ms, &irqoff_ms_ops, &irqoff_pending_ms, 0644);

/* ---- memory fragmentation and high-order allocations -------------------- */

static LIST_HEAD(frag_pages);
static unsigned long frag_held;
module_param(frag_held, ulong, 0444);
static unsigned int frag_state;

static void frag_release(void)
{
	struct page *page, *next;

	list_for_each_entry_safe(page, next, &frag_pages, lru) {
		list_del(&page->lru);
		__free_page(page);
	}
	frag_held = 0;
}

static void frag_hold(struct page *page, int order)
{
	unsigned long i;

	if (order)
		split_page(page, order);
	for (i = 0; i < (1UL << order); i++)
		list_add_tail(&page[i].lru, &frag_pages);
	frag_held += 1UL << order;
}

static int frag_min_order;

/* Take every free block of at least frag_min_order that the allocator
 * gives without reclaim, largest first, so nothing larger is left behind
 * when the smallest pass ends. */
static void frag_sweep(void)
{
	/* No reclaim, no kswapd, no reserves: stop at the min watermark and
	 * leave the rest of the kernel its emergency pool. */
	const gfp_t gfp = __GFP_NOWARN | __GFP_NORETRY | __GFP_NOMEMALLOC;
	/* ZONE_DMA keeps a reserve against ordinary allocations (lowmem
	 * reserve) big enough to hold large free blocks: drain it with its own
	 * zone flag too. */
	const gfp_t zones[] = {
		0,
#ifdef CONFIG_ZONE_DMA
		__GFP_DMA,
#endif
	};
	struct page *page;
	unsigned int z;
	int order;

	for (z = 0; z < ARRAY_SIZE(zones); z++) {
		for (order = KD_TOP_ORDER; order >= frag_min_order; order--) {
			while ((page = alloc_pages(gfp | zones[z], order)))
				frag_hold(page, order);
			cond_resched();
		}
	}
}

static void frag_sweep_fn(struct work_struct *work)
{
	frag_sweep();
}
static DECLARE_WORK(frag_work, frag_sweep_fn);

static void frag_sweep_all_cpus(int min_order)
{
	int cpu;

	frag_min_order = min_order;
	/* Each CPU keeps freed pages on lists that only it allocates from:
	 * sweep from every CPU. */
	for_each_online_cpu(cpu) {
		schedule_work_on(cpu, &frag_work);
		flush_work(&frag_work);
	}
}

static void frag_take(void)
{
	struct page *page, *next;

	frag_sweep_all_cpus(0);
	/* Give back pfn%4 in {0,1}: each freed pair is an aligned order-1
	 * block whose buddy stays held. Order-1 must stay available: fork()
	 * needs it for page tables. */
	list_for_each_entry_safe(page, next, &frag_pages, lru) {
		if (page_to_pfn(page) & 2)
			continue;
		list_del(&page->lru);
		__free_page(page);
		frag_held--;
	}
}

static int fragment_set(const char *val, const struct kernel_param *kp)
{
	unsigned int on;
	int ret = kstrtouint(val, 0, &on);

	if (ret)
		return ret;
	mutex_lock(&kd_lock);
	frag_release();
	if (on)
		frag_take();
	frag_state = !!on;
	mutex_unlock(&kd_lock);
	return 0;
}

static const struct kernel_param_ops fragment_ops = {
	.set = fragment_set,
	.get = param_get_uint,
};
module_param_cb(fragment, &fragment_ops, &frag_state, 0644);

static unsigned int alloc_order = 4;
module_param(alloc_order, uint, 0644);
static unsigned int alloc_count = 1;
module_param(alloc_count, uint, 0644);
static char alloc_gfp[32] = "kernel";
module_param_string(alloc_gfp, alloc_gfp, sizeof(alloc_gfp), 0644);
static unsigned long alloc_ok, alloc_failed;
module_param(alloc_ok, ulong, 0444);
module_param(alloc_failed, ulong, 0444);
static unsigned int alloc_runs;

static int parse_gfp(const char *s, gfp_t *out)
{
	char buf[sizeof(alloc_gfp)], *p = buf, *tok;
	gfp_t gfp = 0;
	bool base = false, warn = false;

	strscpy(buf, s, sizeof(buf));
	while ((tok = strsep(&p, ",|+ \n"))) {
		if (!*tok)
			continue;
		if (!strcmp(tok, "kernel"))
			gfp |= GFP_KERNEL, base = true;
		else if (!strcmp(tok, "nofs"))
			gfp |= GFP_NOFS, base = true;
		else if (!strcmp(tok, "noio"))
			gfp |= GFP_NOIO, base = true;
		else if (!strcmp(tok, "noretry"))
			gfp |= __GFP_NORETRY;
		else if (!strcmp(tok, "warn"))
			warn = true;
		else
			return -EINVAL;
	}
	if (!base)
		return -EINVAL;
	*out = warn ? gfp : gfp | __GFP_NOWARN;
	return 0;
}

static int alloc_set(const char *val, const struct kernel_param *kp)
{
	struct page **blocks;
	unsigned int i, order = READ_ONCE(alloc_order), count = READ_ONCE(alloc_count);
	gfp_t gfp;
	int ret;

	ret = parse_gfp(alloc_gfp, &gfp);
	if (ret)
		return ret;
	if (order > KD_TOP_ORDER || !count || count > 4096)
		return -EINVAL;
	blocks = kvcalloc(count, sizeof(*blocks), GFP_KERNEL);
	if (!blocks)
		return -ENOMEM;
	mutex_lock(&kd_lock);
	/* With memory exhausted, kswapd and kcompactd wake up for other
	 * allocations and can rebuild free blocks after the fragmentation
	 * (compaction empties pageblocks of movable pages into the holes).
	 * Take whatever order-2 or larger has appeared since, so the
	 * allocation below meets only order-0 and order-1 blocks. */
	if (frag_state)
		frag_sweep_all_cpus(2);
	alloc_ok = alloc_failed = 0;
	for (i = 0; i < count; i++) {
		blocks[i] = alloc_pages(gfp, order);
		if (blocks[i])
			alloc_ok++;
		else
			alloc_failed++;
	}
	for (i = 0; i < count; i++)
		if (blocks[i])
			__free_pages(blocks[i], order);
	alloc_runs++;
	mutex_unlock(&kd_lock);
	kvfree(blocks);
	return 0;
}

static const struct kernel_param_ops alloc_ops = {
	.set = alloc_set,
	.get = param_get_uint,
};
module_param_cb(alloc, &alloc_ops, &alloc_runs, 0644);

static int __init kdiag_test_init(void)
{
	return 0;
}

static void __exit kdiag_test_exit(void)
{
	flush_work(&irqoff_work);
	flush_work(&frag_work);
	frag_release();
}

module_init(kdiag_test_init);
module_exit(kdiag_test_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kdiag test faults: interrupts-off windows, fragmentation, high-order allocations");
