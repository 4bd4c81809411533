// Storage owns a block of device memory and the allocator that frees it; tensors are views on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "tensor/device.h"

namespace cm {

// Memory statistics an allocator keeps (bytes). `reserved` counts what the allocator holds from the
// system, cached blocks included; `allocated` what live storages use.
struct MemoryStats {
  int64_t allocated = 0;
  int64_t reserved = 0;
  int64_t peak_allocated = 0;
  int64_t peak_reserved = 0;
  int64_t num_allocs = 0;         // allocate() calls
  int64_t num_system_allocs = 0;  // calls that reached the system (malloc / cudaMalloc)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  virtual MemoryStats stats() const = 0;
  virtual void reset_peak() = 0;
  // Returns cached, unused blocks to the system (allocators that cache).
  virtual void empty_cache() {}
};

// The allocator of a device (the CPU's, or the CUDA backend's caching allocator).
Allocator& allocator_for(Device d);

class Storage {
 public:
  // Allocates nbytes on d through allocator_for(d).
  Storage(size_t nbytes, Device d);
  // Adopts memory owned elsewhere (a memory-mapped file, say); `release` runs when the storage
  // dies.
  Storage(void* data, size_t nbytes, Device d, std::function<void(void*)> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;      // set when allocated here
  std::function<void(void*)> release_;  // set when adopted
};

}  // namespace cm
