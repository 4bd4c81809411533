// safetensors checkpoints: the reader, the writer and module helpers.
//
// File layout (huggingface/safetensors): an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
// (an object, first byte '{', maybe space-padded) mapping each tensor name to
// {"dtype": "F32", "shape": [2, 2], "data_offsets": [begin, end]} plus an optional "__metadata__"
// string -> string map, then the byte buffer: row-major little-endian data, offsets relative to
// its start, covered exactly once (no holes, no overlaps, nothing after the last tensor).
//
// The writer matches the reference writer byte for byte: compact JSON with "__metadata__" first,
// tensors ordered by descending dtype (the reference's enum order, which follows alignment) then
// by name, the header space-padded to a multiple of 8 so that every tensor starts aligned.
// The reader validates the header strictly: every malformed file is a cm::Error that names the
// file, the problem and, where there is one, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/module.h"
#include "tensor/tensor.h"

namespace cm::nn {

// The safetensors name of a cm dtype: f32 "F32", f64 "F64", f16 "F16", bf16 "BF16", i32 "I32",
// i64 "I64", u8 "U8", bool "BOOL".
const char* safetensors_dtype_name(DType t);

// Writes `tensors` (any device, dtype and strides: each is copied to the host, contiguous, one at
// a time) and optional metadata to `path`, atomically (nn/atomic_file.h). The name "__metadata__"
// is reserved. With no metadata the "__metadata__" entry is left out, as the reference does.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// One header entry.
struct SafetensorsInfo {
  std::string dtype;  // the file's dtype name: "F32", "I16", ...
  Shape shape;
  uint64_t begin = 0;  // [begin, end): byte range in the data buffer (after the header)
  uint64_t end = 0;
};

// A safetensors file, memory-mapped (private, copy-on-write: the file is opened read-only and never
// changes) and validated when opened. Copies share the mapping; it is unmapped when the last copy
// and the last tensor aliasing it are gone. Rewriting the file through save_safetensors (rename)
// does not disturb an open mapping; truncating the file in place while it is mapped does.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const;
  // Tensor names in buffer order (ascending data_offsets).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const;
  const SafetensorsInfo& info(const std::string& name) const;
  // Byte offset of the data buffer in the file (8 + N).
  uint64_t data_start() const;

  // The tensor `name`, as dtype `as` (default: the file's dtype) on `device`.
  // File dtypes with a cm equivalent (F32 F64 F16 BF16 I32 I64 U8 BOOL) load as that dtype and
  // convert to any `as` with cm's casts. I8, I16, U16, U32 and U64 have none: they load only
  // when `as` is given, and an integer `as` must hold every value (else an error naming the
  // tensor and the value). On the CPU with no conversion the result aliases the mapping (zero
  // copy) when the data is aligned for its dtype; writes to it stay private to this process.
  // BOOL data must hold only 0 and 1.
  Tensor get(const std::string& name, std::optional<DType> as = std::nullopt,
             Device device = Device::cpu()) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// Every tensor of the file, as SafetensorsFile::get(name, nullopt, device) gives it.
std::map<std::string, Tensor> load_safetensors(const std::string& path,
                                               Device device = Device::cpu());

// A module's state_dict (parameters and buffers by dotted name) to a safetensors file.
void save_module(const std::string& path, const Module& m,
                 const std::map<std::string, std::string>& metadata = {});
// Loads a file written by save_module (or PyTorch's save_file of a state dict) into `m` through
// Module::load_state_dict, converting dtype and device. With strict, a missing, unexpected or
// mis-shaped entry is an error that lists them all (and names the file).
void load_module(const std::string& path, Module& m, bool strict = true);

}  // namespace cm::nn
