// The CPU backend object and its allocator.
#include "tensor/cpu/cpu_backend.h"

#include <cstdlib>

#include "tensor/caching_allocator.h"

namespace cm::cpu {

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
