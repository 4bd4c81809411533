// A caching allocator shared by the CPU and CUDA backends. Freed blocks are kept in free lists by
// size class and handed out again, so a training loop that allocates the same shapes every step
// reaches a steady state with no calls to the system allocator (no page faults on the CPU, no
// cudaMalloc/cudaFree on the GPU). Sizes are rounded up to one of four classes per power of two
// (at most 25% waste). When the system allocator fails, the cache is released and the request
// retried once. Statistics count live bytes (rounded), reserved bytes (live + cached) and peaks.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "tensor/storage.h"

namespace cm {

class CachingAllocator final : public Allocator {
 public:
  using SystemAlloc = std::function<void*(size_t)>;  // returns nullptr when out of memory
  using SystemFree = std::function<void(void*)>;

  CachingAllocator(std::string name, SystemAlloc sys_alloc, SystemFree sys_free);
  ~CachingAllocator() override;

  void* allocate(size_t nbytes) override;
  void deallocate(void* ptr, size_t nbytes) override;
  MemoryStats stats() const override;
  void reset_peak() override;
  void empty_cache() override;

  // The size a request is rounded up to (exposed for tests).
  static size_t round_size(size_t nbytes);

 private:
  void release_cached_locked();

  std::string name_;
  SystemAlloc sys_alloc_;
  SystemFree sys_free_;
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;  // size class -> cached blocks
  MemoryStats stats_;
};

}  // namespace cm
