# Sharing a kernel's work items among the CPU threads. `sync_parallelize` deals its tasks out to
# the threads in turn, so an op waits for the slowest thread's fixed share: on a shared 2-core VM
# one core is often slower for a while (a busy neighbour, the hypervisor), and an encoder linear
# took ~7-14 % longer that way than with the scheme here. One task per thread claims the next
# item from a counter until none are left, so a slow thread simply takes fewer. A thread that
# starts late, or never, leaves its share to the others; nobody waits on it.
from max.algorithm import sync_parallelize
from std.atomic import Atomic
from std.memory import stack_allocation
from std.sys import num_logical_cores

comptime MAX_PHASES = 16


def share_phases[F: def(Int, Int) register_passable -> None](items: UnsafePointer[Int, ...], phases: Int, func: F) raises:
    """Calls func(p, i) for every phase p < phases and item i < items[p], phase after phase: the
    threads wait for each other only at the end of a phase (for an item another thread claimed)."""
    if phases > MAX_PHASES:
        raise Error("share_phases: more than 16 phases")
    var claimed = stack_allocation[MAX_PHASES, Int64]()
    var done = stack_allocation[MAX_PHASES, Int64]()
    for p in range(phases):
        claimed[p] = 0
        done[p] = 0

    def worker(thread: Int) {var items, var phases, var claimed, var done, ref func}:
        for p in range(phases):
            while True:
                var item = Int(Atomic.fetch_add(claimed + p, 1))
                if item >= items[p]:
                    break
                func(p, item)
                _ = Atomic.fetch_add(done + p, 1)
            while Int(Atomic.load(done + p)) < items[p]:
                pass  # another thread is finishing an item of this phase
    sync_parallelize(worker, num_logical_cores())


def share_items[F: def(Int) register_passable -> None](n_items: Int, func: F) raises:
    """Calls func(i) for every item i < n_items."""
    var items = stack_allocation[1, Int]()
    items[0] = n_items

    def one_phase(p: Int, i: Int) {ref func}:
        func(i)
    share_phases(items, 1, one_phase)
