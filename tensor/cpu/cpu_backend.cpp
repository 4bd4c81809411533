// The CPU backend object and its allocator (64-byte aligned blocks, with statistics).
#include "tensor/cpu/cpu_backend.h"

#include <atomic>
#include <cstdlib>
#include <mutex>

namespace cm::cpu {
namespace {

class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    size_t rounded = (std::max<size_t>(nbytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    CM_CHECK(p != nullptr, "cpu allocator: out of memory allocating ", nbytes, " bytes");
    std::lock_guard<std::mutex> lock(mu_);
    stats_.allocated += int64_t(nbytes);
    stats_.reserved += int64_t(nbytes);
    stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
    ++stats_.num_allocs;
    ++stats_.num_system_allocs;
    return p;
  }
  void deallocate(void* p, size_t nbytes) override {
    std::free(p);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.allocated -= int64_t(nbytes);
    stats_.reserved -= int64_t(nbytes);
  }
  MemoryStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_allocated = stats_.allocated;
    stats_.peak_reserved = stats_.reserved;
  }

 private:
  mutable std::mutex mu_;
  MemoryStats stats_;
};

}  // namespace

Allocator& CpuBackend::allocator() {
  static CpuAllocator alloc;
  return alloc;
}

CpuBackend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace cm::cpu
