// `cm bench`: the benchmark cases of shared/spec/benchmarks.md on a SongUNet preset — forward,
// one-step sampling, and a full CT step (online forward with gradients, target forward without,
// squared-ℓ2 loss, backward, RAdam update, target EMA update) — printing one JSON line per case:
// name, device, dtype, batch, median ms per step after warm-up, images/s, peak memory.
#pragma once

#include "runner/cli.h"

namespace cm::runner {

// Runs the benchmark; returns the exit code. Errors are thrown as cm::Error.
int run_bench(const BenchCommand& command);
// The same from argv as main's (argv[1] is "bench"): parse_command_line, then run_bench.
int cmd_bench(int argc, char** argv);

}  // namespace cm::runner
