// Fuzz target: the run-configuration schema (runner/config.h). The input is parsed as JSON with
// nn::parse_json, validated by resolve_config, and the resolved configuration made typed.
#include <string_view>

#include "nn/file_io.h"
#include "runner/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cm::fuzz::expect_cm_error_or_success([&] {
    const nlohmann::json user =
        cm::nn::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "input");
    const nlohmann::json resolved = cm::runner::resolve_config(user, "input");
    cm::runner::typed_config(resolved);
  });
  return 0;
}
