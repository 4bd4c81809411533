// `cm bench`: the benchmark cases of shared/spec/benchmarks.md on a SongUNet preset — forward,
// one-step sampling, and a full CT step (online forward with gradients, target forward without,
// squared-ℓ2 loss, backward, RAdam update, target EMA update) — printing one JSON line per case:
// name, device, dtype, batch, median ms per step after warm-up, images/s, peak memory.
#pragma once

namespace cm::runner {

int cmd_bench(int argc, char** argv);

}  // namespace cm::runner
