// The CPU backend object, its allocator and its thread pool.
#include "tensor/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "tensor/caching_allocator.h"
#include "tensor/cpu/loops.h"

namespace cm::cpu {

// ---- the thread pool behind loops.h's run_items ------------------------------------------------
// One job at a time: the caller publishes it (items [0, n), a function), wakes the workers and runs
// items itself as thread 0; each item goes to whichever thread takes the next index. state_ holds
// an "open" bit and the number of workers inside the job: a worker joins only while the job is
// open, the caller closes it once every item has been taken and then waits only for the workers
// inside. Idle workers and the waiting caller spin for kSpin, then sleep (futex, through
// std::atomic::wait), so that a thread never holds a core for long while another needs it.
namespace {

thread_local bool t_in_item = false;

constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until done() or for about kSpin; returns done().
template <class Done>
bool spin_until(Done&& done) {
  const auto start = std::chrono::steady_clock::now();
  for (int k = 1;; ++k) {
    if (done()) return true;
    cpu_relax();
    if (k % 32 == 0 && std::chrono::steady_clock::now() - start > kSpin) return done();
  }
}

class Pool {
 public:
  // Never destroyed: the workers sleep inside it when the process exits.
  static Pool& get() {
    static Pool* pool = new Pool();
    return *pool;
  }

  void run(int64_t n, int threads, void* ctx, detail::ItemFn fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) {  // another thread's job holds the pool: run this one here
      t_in_item = true;
      try {
        for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
      } catch (...) {
        t_in_item = false;
        throw;
      }
      t_in_item = false;
      return;
    }
    grow(threads - 1);
    ctx_ = ctx;
    fn_ = fn;
    n_ = n;
    threads_ = threads;
    error_ = nullptr;
    next_.store(0, std::memory_order_relaxed);
    state_.store(kOpen, std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_release);
    wake_.notify_all();
    work(0);
    if (state_.fetch_and(~kOpen, std::memory_order_acq_rel) != kOpen) {  // workers still inside
      auto idle = [&] { return state_.load(std::memory_order_acquire) == 0; };
      while (!spin_until(idle)) {
        const uint32_t d = done_.load(std::memory_order_acquire);
        if (idle()) break;
        done_.wait(d, std::memory_order_acquire);
      }
    }
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  static constexpr uint64_t kOpen = uint64_t(1) << 32;

  // Workers 1 .. count (thread 0 is the caller).
  void grow(int count) {
    while (int(workers_.size()) < count) {
      const int id = int(workers_.size()) + 1;
      workers_.emplace_back([this, id, seen = wake_.load()] { worker(id, seen); });
    }
  }

  void worker(int id, uint32_t seen) {
    for (;;) {
      if (!spin_until([&] { return wake_.load(std::memory_order_acquire) != seen; }))
        wake_.wait(seen, std::memory_order_acquire);
      const uint32_t now = wake_.load(std::memory_order_acquire);
      if (now == seen) continue;
      seen = now;
      uint64_t s = state_.load(std::memory_order_acquire);
      bool joined = false;
      while ((s & kOpen) && !joined)
        joined = state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                              std::memory_order_acquire);
      if (!joined) continue;
      if (id < threads_) work(id);
      if (state_.fetch_sub(1, std::memory_order_acq_rel) ==
          1) {  // the last one out of a closed job
        done_.fetch_add(1, std::memory_order_release);
        done_.notify_one();
      }
    }
  }

  // Runs items until none is left; the first exception stops the hand-out.
  void work(int thread) {
    t_in_item = true;
    for (;;) {
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_) break;
      try {
        fn_(ctx_, i, thread);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_, std::memory_order_relaxed);
      }
    }
    t_in_item = false;
  }

  std::mutex busy_;  // held by the caller of the current job
  // The job: written by the caller while no worker is inside.
  void* ctx_ = nullptr;
  detail::ItemFn fn_ = nullptr;
  int64_t n_ = 0;
  int threads_ = 1;
  std::exception_ptr error_;
  std::mutex error_mutex_;
  std::atomic<int64_t> next_{0};    // the next item to hand out
  std::atomic<uint64_t> state_{0};  // kOpen | workers inside
  std::atomic<uint32_t> wake_{0};   // bumped for each job; idle workers wait on it
  std::atomic<uint32_t> done_{0};   // bumped by the last worker out; the caller waits on it
  std::vector<std::thread> workers_;
};

}  // namespace

int max_threads() {
  return std::max(1, omp_get_max_threads());
}

bool in_parallel() {
  return t_in_item;
}

namespace detail {
void run_pool(int64_t n, int threads, void* ctx, ItemFn fn) {
  Pool::get().run(n, threads, ctx, fn);
}
}  // namespace detail

Allocator& CpuBackend::allocator(int) {
  // 64-byte aligned blocks, cached for reuse (see tensor/caching_allocator.h). Never destroyed:
  // tensors in static storage may outlive any static allocator object.
  static CachingAllocator* alloc = new CachingAllocator(
      "cpu", [](size_t n) { return std::aligned_alloc(64, n); }, [](void* p) { std::free(p); });
  return *alloc;
}

CpuBackend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace cm::cpu
