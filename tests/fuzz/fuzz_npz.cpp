// Fuzz target: NumPy files. The input is read as an .npz (datasets/npz.h: read_npz, and the
// downsampled-ImageNet loader load_imagenet_npz) and, on its own, as an .npy (parse_npy_header).
#include "datasets/dataset.h"
#include "datasets/npz.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cm::fuzz::expect_cm_error_or_success(
      [&] { cm::data::parse_npy_header(data, size, "input.npy"); });
  const cm::fuzz::MemFile file(data, size);
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::read_npz(file.path()); });
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::load_imagenet_npz(file.path()); });
  return 0;
}
