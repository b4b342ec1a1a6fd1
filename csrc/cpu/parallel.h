// Requests of uneven cost over torch's threads. at::parallel_for hands each thread a fixed
// contiguous range, which suits rows of equal work; a verification request's work depends on
// where it stops (one row or several, one input or two), so with a few requests per thread a
// static split leaves one thread idle while the other finishes. Here each thread takes the next
// request from a shared counter instead.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace specdec {

template <typename F>
void parallel_requests(int64_t B, const F& work) {
  const int64_t threads = std::min<int64_t>(B, at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t b = 0; b < B; ++b) work(b);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t b = next.fetch_add(1, std::memory_order_relaxed); b < B;
           b = next.fetch_add(1, std::memory_order_relaxed)) {
        work(b);
      }
    }
  });
}

}  // namespace specdec
