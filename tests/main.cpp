// The test runner. Test binaries must list their cases without touching a GPU (CTest discovery
// runs them at build time); GPU cases check cm::cuda::is_available() themselves.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

int main(int argc, char** argv) {
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
