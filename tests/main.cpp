// The test runner. Test binaries must list their cases without touching a GPU (CTest discovery
// runs them at build time); GPU cases check cm::cuda::is_available() themselves. With
// CM_TEST_DEVICE=cuda (tests/helpers.h) the device-generic suites run on the GPU, and the whole
// run is skipped (exit 77, CTest's "skipped") where there is none.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tensor/backend.h"

int main(int argc, char** argv) {
  const char* dev = std::getenv("CM_TEST_DEVICE");
  if (dev && std::string(dev).rfind("cuda", 0) == 0 && !cm::cuda::is_available()) {
    std::printf("skipped: CM_TEST_DEVICE=%s, but no CUDA device is available\n", dev);
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
