// Fuzz target: the IDX loader (MNIST / Fashion-MNIST, raw or gzipped). The input is two files: a
// little-endian u32 L, then L bytes of the images file, then the labels file (the rest).
#include <algorithm>

#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t split = size;
  size_t start = 0;
  if (size >= 4) {
    const uint32_t l = uint32_t(data[0]) | uint32_t(data[1]) << 8 | uint32_t(data[2]) << 16 |
                       uint32_t(data[3]) << 24;
    start = 4;
    split = 4 + std::min<size_t>(l, size - 4);
  }
  const cm::fuzz::MemFile images(data + start, split - start);
  const cm::fuzz::MemFile labels(data + split, size - split);
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::load_idx(images.path(), labels.path()); });
  return 0;
}
