// NumPy's .npz archives, written and read: a ZIP of one .npy file per named array, as numpy.savez
// writes (stored entries) and numpy.load reads. The images the runner hands to the reference
// evaluators (arr_0 u8 NHWC) and the FID reference statistics of EDM and clean-fid (mu f64 [D],
// sigma f64 [D, D]) are both .npz files.
//
// dtypes: u8 '|u1', bool '|b1', i32 '<i4', i64 '<i8', f16 '<f2', f32 '<f4', f64 '<f8' (bf16 has
// no NumPy equivalent and is refused). Reading parses each header with parse_npy_header
// (datasets/dataset.h), so a malformed archive or array is a cm::Error that names the file and
// the entry.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace cm::data {

// The NumPy descr of a cm dtype ("<f8" for f64, ...); bf16 is an error naming `op`.
std::string npy_descr(DType t, const char* op);

// Writes the arrays (any device, strides and of the dtypes above) as "<name>.npy" entries of an
// uncompressed ZIP, in the order given, C order, format version 1.0, atomically
// (nn/atomic_file.h). Names must be unique and non-empty; ZIP64 is not written, so each array
// must stay under 4 GiB.
void write_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& arrays);

// The "<name>.npy" entries of an .npz (stored or deflated, as numpy.savez and savez_compressed
// write) as contiguous CPU tensors keyed by <name>: all of them when `keys` is empty, otherwise
// those named in `keys` that the archive holds (the others are neither read nor checked).
// Fortran-order arrays are returned in C order. An entry read that is not an .npy file, or an
// array of a dtype cm lacks, is an error naming the file and the entry.
std::map<std::string, Tensor> read_npz(const std::string& path,
                                       const std::vector<std::string>& keys = {});

}  // namespace cm::data
