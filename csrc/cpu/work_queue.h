#pragma once
// A work queue over the threads of at::parallel_for, for kernels whose work items differ in cost or whose threads may
// lose their core on a shared machine.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace grace_fast::cpu {

// run(item) for every item in [0, items), each touching about `elements` values, handed out one at a time to the
// threads in order: a thread that loses its core, or draws a costly item, takes fewer items instead of holding the
// others at the join. Tiny problems, one item, and calls from inside a parallel region run inline, in order.
template <typename Fn>
void for_each_item(int64_t items, int64_t elements, const Fn& run) {
  if (items == 1 || items * elements <= at::internal::GRAIN_SIZE || at::in_parallel_region()) {
    for (int64_t item = 0; item < items; ++item) run(item);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(items, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t item = next++; item < items; item = next++) run(item);
  });
}

}  // namespace grace_fast::cpu
