// Fuzz target: the safetensors reader (nn/safetensors.h) on the input as a file: open and validate
// the header, then every tensor as stored and converted to f32.
#include "nn/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const cm::fuzz::MemFile file(data, size);
  cm::fuzz::expect_cm_error_or_success([&] {
    const cm::nn::SafetensorsFile f(file.path());
    for (const std::string& name : f.names()) {
      cm::fuzz::expect_cm_error_or_success([&] { f.get(name); });
      cm::fuzz::expect_cm_error_or_success([&] { f.get(name, cm::DType::f32); });
    }
  });
  return 0;
}
