// Fuzz target: the PNG decoder (datasets/png.h, libpng behind cm's error handling) on the input.
#include "datasets/png.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::decode_png(data, size, "input.png"); });
  return 0;
}
