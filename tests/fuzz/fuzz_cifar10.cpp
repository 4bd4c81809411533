// Fuzz target: the CIFAR-10 binary batch loader, with the input as the test split's
// test_batch.bin in a per-process directory.
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& dir = cm::fuzz::scratch_dir("cifar10");
  cm::fuzz::write_file(dir / "test_batch.bin", data, size);
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::load_cifar10_bin(dir.string(), "test"); });
  return 0;
}
