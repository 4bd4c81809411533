// Shared by the benchmark sources: the command-line options and the CUDA entry point.
#pragma once

#include <string>

struct BenchArgs {
  bool quick = false;  // smaller sizes, fewer repeats
  std::string filter;  // run only cases whose name contains this
  std::string device = "cpu";
};

// The GPU cases (bench_cuda.cpp); false where cm was built without CUDA or no device is present.
bool bench_cuda(const BenchArgs& args);
