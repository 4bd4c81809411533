// `cm report RUN_DIR [RUN_DIR ...] [--out report.html] [--watch SECONDS]`: a run's training
// dynamics as one self-contained HTML page (no network, no external scripts or fonts; every plot
// an inline SVG drawn by runner/svg.h, every sample grid an inline PNG):
//   - loss (raw and smoothed), gradient norm, learning rate, μ(k) and N(k), images/s and memory
//     against the step, the loss against wall time; skipped (non-finite) steps marked in red;
//   - per-layer statistics (train.layer_stats_every) as heatmaps, layer × step: gradient norm,
//     update/weight ratio, activation std (layer names on hover);
//   - the sample grids of every logged step in order, a scrollable strip per kind;
//   - every eval-*.json (metric, NFE, value) as a table and as a curve against the step;
//   - the resolved configuration and the provenance (cm revision, device, date) of each start.
// Several runs are overlaid on the same axes with a legend (one colour per run).
//
// What is read (docs/run-directory.md): config.json, metrics.jsonl (scalar lines have "loss";
// layer lines "layer_stats"; start lines "event": "start"), samples/grid-<step>-<kind>.png and
// eval-*.json. A live run's torn last line of metrics.jsonl is skipped; any other malformed line
// is an error naming the file and the line.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace cm::runner {

struct ReportCommand {
  std::vector<std::string> runs;   // run directories
  std::optional<std::string> out;  // default: RUN_DIR/report.html of the first run
  int64_t watch = 0;               // seconds between rewrites (0: write once)
};

// One run directory as the report reads it.
struct RunRecord {
  std::filesystem::path path;
  std::string name;       // the directory's name
  nlohmann::json config;  // config.json
  struct Scalar {
    int64_t step = 0;
    double loss = 0, grad_norm = 0, lr = 0, images_per_s = 0, mem_peak = 0, mem_allocated = 0;
    double wall_s = 0;  // elapsed_s, continued over resumes
    double mu = NAN, n = NAN;
    int64_t skipped = 0;  // skipped steps so far
  };
  std::vector<Scalar> scalars;
  std::vector<int64_t> skipped_at;  // the logged steps whose interval skipped a step
  struct Layers {
    int64_t step = 0;
    nlohmann::json parameters, activations;
  };
  std::vector<Layers> layers;
  std::vector<nlohmann::json> starts;  // the "start" lines (provenance of each start)
  struct Grid {
    int64_t step = 0;
    std::string kind;
    std::filesystem::path path;
  };
  std::vector<Grid> grids;            // by kind, then step
  std::vector<nlohmann::json> evals;  // eval-*.json, by step
  int64_t total_steps = 0;            // train.steps of the config
  bool complete() const { return !scalars.empty() && scalars.back().step >= total_steps; }
};

RunRecord read_run(const std::filesystem::path& dir);

// The page of one or more runs.
std::string render_report(const std::vector<RunRecord>& runs, int64_t refresh_seconds = 0);

int run_report(const ReportCommand& c);

// RFC 4648 base64 (the sample grids' data: URLs).
std::string base64_encode(const std::string& bytes);

}  // namespace cm::runner
