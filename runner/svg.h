// Plots as inline SVG text, drawn by cm itself for `cm report` (runner/report.h): a line plot of
// several series on linear or logarithmic axes, and a heatmap of a matrix (layer × step). No
// scripts, fonts or anything outside the returned text.
//
// The markup is part of the contract the report's browser test reads: every plot is one
// <svg class="plot" id=...>; each series is one <path class="series" data-label=... data-n=N>
// whose `d` holds N vertices (one "M" or "L" each; a break in the series, where a value is not
// finite or not positive on a log axis, starts a new "M"); each heatmap cell is one
// <rect class="cell"> with a <title> naming its row, column and value (the hover text).
#pragma once

#include <string>
#include <vector>

namespace cm::runner::svg {

// The colour of series k: ten distinct colours, cycled.
std::string series_colour(size_t k);

struct Series {
  std::string label{};
  std::vector<double> x{},
      y{};               // equal lengths; non-finite y (or y ≤ 0 on a log axis) break the line
  std::string colour{};  // CSS colour; empty: series_colour(index)
  double width = 1.5;    // stroke width
  double opacity = 1.0;
};

struct LinePlot {
  std::string id{};  // the <svg>'s id (unique within the page)
  std::string title{}, x_label{}, y_label{};
  bool log_x = false, log_y = false;
  std::vector<Series> series{};
  std::vector<double> marks_x{};  // vertical marks (e.g. skipped steps), drawn in red
  std::string marks_label{};      // their hover text, e.g. "skipped step"
  int width = 600, height = 290;
};

// The plot as one <svg> element. A plot without any drawable point says so in its area.
std::string line_plot(const LinePlot& p);

struct Heatmap {
  std::string id{}, title{};
  std::vector<std::string> rows{};            // row names (hover text; shown when few)
  std::vector<double> columns{};              // column positions (steps), increasing
  std::vector<std::vector<double>> values{};  // [rows][columns]; non-finite = missing (gray)
  bool log = true;                            // colour by log10 of the value (values ≤ 0 gray)
  std::string value_label{};                  // e.g. "gradient norm"
  int width = 720;
};

std::string heatmap(const Heatmap& h);

// "Nice" tick positions covering [lo, hi]: about `target` multiples of 1, 2 or 5 × 10^k
// (linear), or the powers of ten inside (log; with 2 and 5 × 10^k added when fewer than three,
// and the linear ticks when still fewer than three).
std::vector<double> ticks(double lo, double hi, bool log, int target = 5);

// Text made safe for XML content and attribute values (& < > " ').
std::string escape(const std::string& s);

}  // namespace cm::runner::svg
