// `cm edit`: zero-shot editing with a trained consistency model (consistency/editing.h, the paper's
// Algorithm 4) — inpainting, colorization, super-resolution, stroke-guided generation, denoising
// and interpolation — on images of a data set or PNG files, written as PNGs, a grid of reference |
// degraded | result rows, edits.npz and recipe.json.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace cm::runner {

struct EditCommand {
  std::string source;               // RUN_DIR or CHECKPOINT of a CT, CD or EDM run
  std::string task;                 // inpaint, colorize, superres, stroke, denoise, interpolate
  std::optional<std::string> data;  // the first --n images of a data set spec, or
  std::vector<std::string> images;  // PNG files (stroke paintings, photos)
  int64_t n = 8;                    // images of --data; points of an interpolation
  std::string mask =
      "builtin:center";         // inpaint: builtin:center|left|top|letter[:X]|boxes[:K], PNG
  int64_t patch = 2;            // superres: the factor
  std::optional<double> sigma;  // stroke: τ_1 (default 20); denoise: the noise σ (0.5)
  std::string sigmas;           // explicit time points (default: the model's grid)
  std::string seeds;            // the noise seeds (default 0..N−1; interpolate: "0,1")
  std::string weights = "ema";
  std::string device = "cpu";
  std::optional<std::string> out;  // default <run>/edits-<task>
  bool allow_nonfinite = false;
  int64_t teacher_steps = 18;  // an EDM run: Heun steps of each ODE solve from τ (f's estimate)
  // A class-conditional model's classes: "K" (one for all), "data" (the images' own labels, from
  // --data), "random" (each seed's own, as cm sample), or "" (data with a labelled --data,
  // random otherwise; interpolation: the first seed's own class).
  std::string class_choice;
};

// Runs the command; returns the exit code. Errors are cm::Errors naming the argument and value.
int run_edit(const EditCommand& command);

}  // namespace cm::runner
