#include "tensor/caching_allocator.h"

#include <bit>

#include "tensor/error.h"

namespace cm {

CachingAllocator::CachingAllocator(std::string name, SystemAlloc sys_alloc, SystemFree sys_free)
    : name_(std::move(name)), sys_alloc_(std::move(sys_alloc)), sys_free_(std::move(sys_free)) {}

CachingAllocator::~CachingAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

size_t CachingAllocator::round_size(size_t nbytes) {
  if (nbytes <= 512) return 512;
  // four classes per power of two: 2^k · {1, 1.25, 1.5, 1.75}
  const int k = std::bit_width(nbytes - 1) - 1;  // 2^k < nbytes <= 2^(k+1)
  const size_t quarter = size_t(1) << (k - 2);
  return (nbytes + quarter - 1) / quarter * quarter;
}

void* CachingAllocator::allocate(size_t nbytes) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.num_allocs;
  void* p = nullptr;
  auto it = free_.find(size);
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
  } else {
    p = sys_alloc_(size);
    if (!p) {  // out of memory: give the cache back and try once more
      release_cached_locked();
      p = sys_alloc_(size);
    }
    CM_CHECK(p != nullptr, name_, " allocator: out of memory allocating ", nbytes, " bytes (",
             stats_.allocated, " bytes in use)");
    ++stats_.num_system_allocs;
    stats_.reserved += int64_t(size);
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
  }
  stats_.allocated += int64_t(size);
  stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
  return p;
}

void CachingAllocator::deallocate(void* ptr, size_t nbytes) {
  const size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  free_[size].push_back(ptr);
  stats_.allocated -= int64_t(size);
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_allocated = stats_.allocated;
  stats_.peak_reserved = stats_.reserved;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

void CachingAllocator::release_cached_locked() {
  for (auto& [size, blocks] : free_) {
    for (void* p : blocks) {
      sys_free_(p);
      stats_.reserved -= int64_t(size);
    }
    blocks.clear();
  }
  free_.clear();
}

}  // namespace cm
