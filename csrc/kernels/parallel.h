// One small parallel-for shared by the CPU kernels: std::thread workers, the calling thread included.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace gixdrt {

// Threads used when a kernel is called with threads ≤ 0: the hardware concurrency (≥ 1).
inline int default_cpu_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

// The number of workers for `n` items with at least `grain` items per worker: in [1, threads].
inline int worker_count(int64_t n, int threads, int64_t grain = 1) {
  if (threads <= 0) threads = default_cpu_threads();
  const int64_t by_work = grain > 0 ? (n + grain - 1) / grain : n;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, by_work)));
}

// Calls fn(begin, end, worker) on blocks [begin, end) of [0, n), `block` items at a time, handed out in order
// to `workers` workers (worker in [0, workers)); the calling thread is worker 0. A worker may take several
// blocks, so per-worker partial results must accumulate over its calls. Each block is processed by
// exactly one worker, so a kernel whose items are independent gives the same result for any worker count.
// The first exception thrown by fn stops the hand-out and is rethrown here after all workers have joined.
template <typename Fn>
void parallel_for(int64_t n, int workers, int64_t block, Fn&& fn) {
  if (n <= 0) return;
  block = std::max<int64_t>(block, 1);
  workers = std::max(1, workers);
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](int worker) {
    try {
      for (;;) {
        const int64_t begin = next.fetch_add(block);
        if (begin >= n) break;
        fn(begin, std::min(begin + block, n), worker);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);  // stop the other workers early
    }
  };
  std::vector<std::thread> pool;
  if (workers > 1) {
    pool.reserve(workers - 1);
    for (int t = 1; t < workers; ++t) {
      try {
        pool.emplace_back(work, t);
      } catch (const std::system_error&) {
        break;  // fewer threads than asked: the ones started (and this one) share the items
      }
    }
  }
  work(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// Contiguous split of [0, n) into `parts` ranges of near-equal size: range p is [split(n, parts, p),
// split(n, parts, p + 1)).
inline int64_t split(int64_t n, int64_t parts, int64_t p) { return n * p / parts; }

}  // namespace gixdrt
