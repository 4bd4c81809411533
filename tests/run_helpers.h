// The tiny training run of the runner and evaluation suites: CT (or CD, EDM) of an 8-channel,
// two-level DDPM++ on the shipped digits for a few steps (a fraction of a second of one core).
// Suites change the fields their case is about.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace cm::test {

inline nlohmann::json tiny_run_config(const std::string& mode = "ct", int64_t steps = 6) {
  nlohmann::json j = {{"mode", mode},
                      {"seed", 3},
                      {"data", {{"dataset", "digits"}}},
                      {"network",
                       {{"preset", "ddpmpp-digits-8"},
                        {"model_channels", 8},
                        {"channel_mult", {1, 2}},
                        {"num_blocks", 1},
                        {"attn_resolutions", {4}}}},
                      {"train",
                       {{"steps", steps},
                        {"batch", 4},
                        {"lr", 1e-3},
                        {"ema", {0.9}},
                        {"log_every", 1},
                        {"checkpoint_every", 100},
                        {"sample_every", 100}}},
                      {"sample", {{"grid", 4}}}};
  if (mode == "ct") j["consistency"] = {{"schedule", "adaptive"}, {"total_steps", steps}};
  return j;
}

}  // namespace cm::test
