#include "runner/report.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "cm_revision.h"  // CM_GIT_REVISION (runner/revision.cmake)
#include "nn/atomic_file.h"
#include "runner/config.h"
#include "runner/svg.h"
#include "tensor/error.h"

namespace cm::runner {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  CM_CHECK(f.good(), "cm report: cannot read ", p.string());
  std::ostringstream s;
  s << f.rdbuf();
  CM_CHECK(!f.bad(), "cm report: cannot read ", p.string());
  return s.str();
}

// A number field of a metrics line: absent → `def`; present but not a number → an error naming
// the file, the line and the field.
double number(const json& j, const char* key, double def, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return def;
  CM_CHECK(j[key].is_number(), where, ": \"", key, "\" is ", j[key].dump(), ", expected a number");
  return j[key].get<double>();
}

int64_t integer(const json& j, const char* key, const std::string& where) {
  CM_CHECK(j.contains(key) && j[key].is_number_integer(), where, ": \"", key, "\" is ",
           j.contains(key) ? j[key].dump() : "missing", ", expected an integer");
  return j[key].get<int64_t>();
}

std::string fmt(double v, const char* f = "%.4g") {
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// TensorBoard's smoothing: an exponential moving average, debiased, over the finite values.
std::vector<double> smoothed(const std::vector<double>& y, double w) {
  std::vector<double> out(y.size(), NAN);
  double acc = 0, norm = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y[i])) continue;
    acc = w * acc + (1 - w) * y[i];
    norm = w * norm + (1 - w);
    out[i] = acc / norm;
  }
  return out;
}

// The smoothing's weight: 0.6 (TensorBoard's default) for up to 50 points, rising to 0.9 at 200
// and more, so that a long curve is smoothed over about the same fraction of its length.
double smoothing_weight(size_t n) {
  return std::clamp(1.0 - 20.0 / double(std::max<size_t>(n, 1)), 0.6, 0.9);
}

}  // namespace

std::string base64_encode(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string o;
  o.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned v = unsigned((unsigned char)in[i]) << 16 |
                       unsigned((unsigned char)in[i + 1]) << 8 | unsigned((unsigned char)in[i + 2]);
    o += t[v >> 18];
    o += t[(v >> 12) & 63];
    o += t[(v >> 6) & 63];
    o += t[v & 63];
  }
  if (i < in.size()) {
    unsigned v = unsigned((unsigned char)in[i]) << 16;
    if (i + 1 < in.size()) v |= unsigned((unsigned char)in[i + 1]) << 8;
    o += t[v >> 18];
    o += t[(v >> 12) & 63];
    o += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    o += '=';
  }
  return o;
}

RunRecord read_run(const fs::path& dir) {
  CM_CHECK(fs::is_directory(dir), "cm report: ", dir.string(), " is not a run directory");
  RunRecord r;
  r.path = dir;
  r.name = fs::absolute(dir).lexically_normal().filename().string();
  if (r.name.empty())
    r.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  const fs::path cfg = dir / "config.json";
  CM_CHECK(fs::is_regular_file(cfg), "cm report: ", dir.string(),
           " has no config.json (not a run directory made by cm train)");
  r.config = read_json_file(cfg.string());
  if (r.config.contains("train") && r.config["train"].contains("steps") &&
      r.config["train"]["steps"].is_number_integer())
    r.total_steps = r.config["train"]["steps"].get<int64_t>();

  const fs::path mpath = dir / "metrics.jsonl";
  if (fs::exists(mpath)) {
    const std::string text = read_bytes(mpath);
    size_t pos = 0;
    int64_t line_no = 0;
    double wall_offset = 0, last_elapsed = 0;
    int64_t last_skipped = 0;
    while (pos < text.size()) {
      const size_t end = text.find('\n', pos);
      const bool torn = end == std::string::npos;  // a live run's line being written
      const std::string line = text.substr(pos, torn ? std::string::npos : end - pos);
      pos = torn ? text.size() : end + 1;
      ++line_no;
      if (line.empty()) continue;
      const std::string where = mpath.string() + ":" + std::to_string(line_no);
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded() && torn) break;
      CM_CHECK(!j.is_discarded() && j.is_object(), where,
               ": not a JSON object: ", line.substr(0, 80));
      if (j.contains("event")) {
        if (j["event"] == "start") r.starts.push_back(j);
        continue;
      }
      const int64_t step = integer(j, "step", where);
      if (j.contains("layer_stats")) {
        const json& ls = j["layer_stats"];
        CM_CHECK(ls.is_object(), where, ": \"layer_stats\" is not an object");
        r.layers.push_back({step, ls.value("parameters", json::object()),
                            ls.value("activations", json::object())});
        continue;
      }
      if (!j.contains("loss")) continue;  // a line of a kind this report does not know
      RunRecord::Scalar s;
      s.step = step;
      s.loss = number(j, "loss", NAN, where);
      s.grad_norm = number(j, "grad_norm", NAN, where);
      s.lr = number(j, "lr", NAN, where);
      s.images_per_s = number(j, "images_per_s", NAN, where);
      s.mem_peak = number(j, "mem_peak", NAN, where);
      s.mem_allocated = number(j, "mem_allocated", NAN, where);
      s.mu = number(j, "mu", NAN, where);
      s.n = number(j, "N", NAN, where);
      const double elapsed = number(j, "elapsed_s", NAN, where);
      if (std::isfinite(elapsed)) {
        if (elapsed < last_elapsed) wall_offset += last_elapsed;  // a resumed run starts at 0
        last_elapsed = elapsed;
        s.wall_s = wall_offset + elapsed;
      } else {
        s.wall_s = NAN;
      }
      s.skipped = int64_t(number(j, "skipped_steps", double(last_skipped), where));
      if (s.skipped > last_skipped) r.skipped_at.push_back(step);
      last_skipped = s.skipped;
      r.scalars.push_back(s);
    }
  }

  const std::regex grid_name(R"(grid-(\d{1,12})-([A-Za-z0-9_]+)\.png)");
  if (fs::is_directory(dir / "samples"))
    for (const auto& e : fs::directory_iterator(dir / "samples")) {
      std::smatch m;
      const std::string f = e.path().filename().string();
      if (e.is_regular_file() && std::regex_match(f, m, grid_name))
        r.grids.push_back({std::stoll(m[1]), m[2], e.path()});
    }
  std::sort(r.grids.begin(), r.grids.end(), [](const auto& a, const auto& b) {
    return std::tie(a.kind, a.step) < std::tie(b.kind, b.step);
  });

  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (!e.is_regular_file() || f.rfind("eval-", 0) != 0 || e.path().extension() != ".json")
      continue;
    json j = read_json_file(e.path().string());
    CM_CHECK(j.is_object() && j.contains("value") && j["value"].is_number(),
             "cm report: ", e.path().string(),
             ": expected an object with a numeric \"value\" (cm eval's output)");
    // the fields the page shows, when present, of the types cm eval writes
    auto check_type = [&](const json& o, const char* key, bool (json::*is)() const,
                          const char* what) {
      CM_CHECK(!o.contains(key) || (o[key].*is)(), "cm report: ", e.path().string(), ": \"", key,
               "\" is ", o.contains(key) ? o[key].dump() : "", ", expected ", what);
    };
    check_type(j, "metric", &json::is_string, "a string");
    check_type(j, "nfe", &json::is_number_integer, "an integer");
    check_type(j, "n", &json::is_number_integer, "an integer");
    check_type(j, "checkpoint", &json::is_object, "an object");
    if (j.contains("checkpoint")) {
      check_type(j["checkpoint"], "step", &json::is_number_integer, "an integer");
      check_type(j["checkpoint"], "weights", &json::is_string, "a string");
    }
    j["file"] = f;
    r.evals.push_back(std::move(j));
  }
  auto eval_step = [](const json& j) -> int64_t {
    return j.contains("checkpoint") && j["checkpoint"].contains("step")
               ? j["checkpoint"]["step"].get<int64_t>()
               : -1;
  };
  std::sort(r.evals.begin(), r.evals.end(), [&](const json& a, const json& b) {
    return std::make_pair(eval_step(a), a["file"].get<std::string>()) <
           std::make_pair(eval_step(b), b["file"].get<std::string>());
  });
  return r;
}

namespace {

const char* kStyle = R"(
body { font-family: sans-serif; margin: 16px 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ccc; }
h3 { font-size: 14px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots svg, .heatmaps svg { border: 1px solid #ddd; }
.strip { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 8px; }
.strip figure { margin: 0; text-align: center; font-size: 11px; }
.strip img { image-rendering: pixelated; height: 200px; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; font-size: 11px; overflow-x: auto; }
g.legend { cursor: pointer; } g.legend.off { opacity: 0.3; }
#errors { color: #c00; } #errors:empty { display: none; }
)";

// Counts each plot's series and points into data attributes (what the browser test reads), makes
// a legend entry toggle its series, and marks the page as loaded; a script error is recorded.
const char* kScript = R"(
window.addEventListener('error', function (e) {
  var n = +(document.documentElement.getAttribute('data-script-errors') || 0) + 1;
  document.documentElement.setAttribute('data-script-errors', String(n));
  document.getElementById('errors').textContent += 'script error: ' + e.message + '\n';
});
document.addEventListener('DOMContentLoaded', function () {
  var plots = document.querySelectorAll('svg.plot');
  for (var i = 0; i < plots.length; ++i) {
    var svg = plots[i], series = svg.querySelectorAll('path.series'), points = 0;
    for (var k = 0; k < series.length; ++k) {
      var d = series[k].getAttribute('d') || '';
      var n = (d.match(/[ML]/g) || []).length;
      series[k].setAttribute('data-counted', String(n));
      points += n;
    }
    svg.setAttribute('data-series-count', String(series.length));
    svg.setAttribute('data-point-count', String(points));
    var legend = svg.querySelectorAll('g.legend');
    for (var k = 0; k < legend.length; ++k) legend[k].addEventListener('click', function () {
      var s = this.closest('svg').querySelector('path.series[data-series="' +
                                                 this.getAttribute('data-series') + '"]');
      var off = this.classList.toggle('off');
      if (s) s.style.display = off ? 'none' : '';
    });
  }
  document.documentElement.setAttribute('data-report-ready', String(plots.length));
});
)";

std::string esc(const std::string& s) {
  return svg::escape(s);
}

using Field = double RunRecord::Scalar::*;

svg::LinePlot scalar_plot(const std::vector<RunRecord>& runs, const std::string& id,
                          const std::string& title, const std::string& y_label, Field f, bool log_y,
                          double scale = 1.0, bool by_wall = false) {
  svg::LinePlot p{.id = id,
                  .title = title,
                  .x_label = by_wall ? "wall time (s)" : "step",
                  .y_label = y_label,
                  .log_y = log_y};
  for (size_t k = 0; k < runs.size(); ++k) {
    svg::Series s{.label = runs[k].name, .colour = svg::series_colour(k)};
    for (const auto& v : runs[k].scalars) {
      s.x.push_back(by_wall ? v.wall_s : double(v.step));
      s.y.push_back(v.*f * scale);
    }
    p.series.push_back(std::move(s));
    if (!by_wall)
      for (int64_t m : runs[k].skipped_at) p.marks_x.push_back(double(m));
  }
  p.marks_label = "a skipped (non-finite) step before step";
  return p;
}

// Loss: each run's raw values (faint) and their smoothing.
svg::LinePlot loss_plot(const std::vector<RunRecord>& runs, bool by_wall) {
  svg::LinePlot p{.id = by_wall ? "loss-wall" : "loss",
                  .title = by_wall ? "loss against wall time" : "loss (raw, and smoothed)",
                  .x_label = by_wall ? "wall time (s)" : "step",
                  .y_label = "loss",
                  .log_y = true};
  for (size_t k = 0; k < runs.size(); ++k) {
    std::vector<double> x, y;
    for (const auto& v : runs[k].scalars) {
      x.push_back(by_wall ? v.wall_s : double(v.step));
      y.push_back(v.loss);
    }
    if (!by_wall)
      p.series.push_back({.label = "",
                          .x = x,
                          .y = y,
                          .colour = svg::series_colour(k),
                          .width = 1.0,
                          .opacity = 0.3});
    p.series.push_back({.label = runs[k].name + (by_wall ? "" : " (smoothed)"),
                        .x = x,
                        .y = smoothed(y, smoothing_weight(y.size())),
                        .colour = svg::series_colour(k)});
    if (!by_wall)
      for (int64_t m : runs[k].skipped_at) p.marks_x.push_back(double(m));
  }
  p.marks_label = "a skipped (non-finite) step before step";
  return p;
}

bool any(const std::vector<RunRecord>& runs, Field f) {
  for (const auto& r : runs)
    for (const auto& v : r.scalars)
      if (std::isfinite(v.*f)) return true;
  return false;
}

// A heatmap of one statistic of the layer_stats lines: rows = names, columns = steps.
svg::Heatmap layer_heatmap(const RunRecord& r, size_t k, const char* group, const char* stat,
                           const std::string& title) {
  svg::Heatmap h{.id = "layers-" + std::to_string(k) + "-" + group + "-" + stat,
                 .title = r.name + ": " + title,
                 .value_label = stat};
  std::set<std::string> names;
  for (const auto& l : r.layers) {
    const json& g = std::string(group) == "parameters" ? l.parameters : l.activations;
    for (auto it = g.begin(); it != g.end(); ++it)
      if (it.value().is_object() && it.value().contains(stat)) names.insert(it.key());
  }
  h.rows.assign(names.begin(), names.end());
  for (const auto& l : r.layers) h.columns.push_back(double(l.step));
  h.values.assign(h.rows.size(), std::vector<double>(r.layers.size(), NAN));
  for (size_t c = 0; c < r.layers.size(); ++c) {
    const json& g =
        std::string(group) == "parameters" ? r.layers[c].parameters : r.layers[c].activations;
    for (size_t row = 0; row < h.rows.size(); ++row) {
      auto it = g.find(h.rows[row]);
      if (it != g.end() && it->is_object() && it->contains(stat) && (*it)[stat].is_number())
        h.values[row][c] = (*it)[stat].get<double>();
    }
  }
  return h;
}

std::string utc_now_text() {
  const std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return b;
}

}  // namespace

std::string render_report(const std::vector<RunRecord>& runs, int64_t refresh_seconds) {
  std::string names;
  for (const auto& r : runs) names += (names.empty() ? "" : ", ") + r.name;
  std::string o = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  if (refresh_seconds > 0)
    o += "<meta http-equiv=\"refresh\" content=\"" + std::to_string(refresh_seconds) + "\">\n";
  o += "<title>cm report: " + esc(names) + "</title>\n<style>" + kStyle + "</style>\n<script>" +
       kScript + "</script>\n</head>\n<body>\n";
  o += "<h1>cm report: " + esc(names) + "</h1>\n<p>Written " + utc_now_text() + " by cm " +
       esc(CM_GIT_REVISION) +
       (refresh_seconds > 0 ? "; rewritten every " + std::to_string(refresh_seconds) + " s" : "") +
       ".</p>\n<pre id=\"errors\"></pre>\n";

  // the runs at a glance
  o += "<h2>Runs</h2>\n<table><tr><th class=\"l\">run</th><th class=\"l\">mode</th><th "
       "class=\"l\">data</th><th class=\"l\">network</th><th>step</th><th>of</th><th>last "
       "loss</th><th>skipped</th><th>wall time (s)</th></tr>\n";
  for (size_t k = 0; k < runs.size(); ++k) {
    const RunRecord& r = runs[k];
    const json& c = r.config;
    auto str = [&](const json::json_pointer& p) {
      return c.contains(p) && c[p].is_string() ? c[p].get<std::string>() : std::string("–");
    };
    const auto* last = r.scalars.empty() ? nullptr : &r.scalars.back();
    o += "<tr><td class=\"l\" style=\"color:" + svg::series_colour(k) + "\">" + esc(r.name) +
         "</td><td class=\"l\">" + esc(str(json::json_pointer("/mode"))) + "</td><td class=\"l\">" +
         esc(str(json::json_pointer("/data/dataset"))) + "</td><td class=\"l\">" +
         esc(str(json::json_pointer("/network/preset"))) + "</td><td>" +
         (last ? std::to_string(last->step) : "0") + "</td><td>" + std::to_string(r.total_steps) +
         "</td><td>" + (last ? fmt(last->loss) : "–") + "</td><td>" +
         (last ? std::to_string(last->skipped) : "0") + "</td><td>" +
         (last && std::isfinite(last->wall_s) ? fmt(last->wall_s, "%.0f") : "–") + "</td></tr>\n";
  }
  o += "</table>\n";

  // scalars
  o += "<h2>Training</h2>\n<div class=\"plots\">\n";
  o += svg::line_plot(loss_plot(runs, false));
  o += svg::line_plot(loss_plot(runs, true));
  o += svg::line_plot(scalar_plot(runs, "grad-norm", "gradient norm (before clipping)", "‖g‖",
                                  &RunRecord::Scalar::grad_norm, true));
  o +=
      svg::line_plot(scalar_plot(runs, "lr", "learning rate", "lr", &RunRecord::Scalar::lr, false));
  if (any(runs, &RunRecord::Scalar::mu)) {
    o += svg::line_plot(
        scalar_plot(runs, "mu", "target EMA rate μ(k)", "μ", &RunRecord::Scalar::mu, false));
    o += svg::line_plot(
        scalar_plot(runs, "n", "discretisation steps N(k)", "N", &RunRecord::Scalar::n, true));
  }
  o += svg::line_plot(scalar_plot(runs, "images-per-s", "throughput", "images/s",
                                  &RunRecord::Scalar::images_per_s, false));
  o += svg::line_plot(scalar_plot(runs, "memory", "peak memory (caching allocator)", "MiB",
                                  &RunRecord::Scalar::mem_peak, false, 1.0 / (1 << 20)));
  o += "</div>\n";

  // per-layer statistics
  o += "<h2>Per-layer statistics</h2>\n";
  bool any_layers = false;
  for (size_t k = 0; k < runs.size(); ++k) {
    const RunRecord& r = runs[k];
    if (r.layers.empty()) continue;
    any_layers = true;
    o += "<h3>" + esc(r.name) + " (" + std::to_string(r.layers.size()) +
         " logged steps; hover a cell for the layer)</h3>\n<div class=\"heatmaps\">\n";
    o +=
        svg::heatmap(layer_heatmap(r, k, "parameters", "grad_norm", "gradient norm per parameter"));
    o += svg::heatmap(
        layer_heatmap(r, k, "parameters", "update_ratio", "update / weight ratio per parameter"));
    o += svg::heatmap(layer_heatmap(r, k, "activations", "std", "activation std per stage"));
    o += "</div>\n";
  }
  if (!any_layers) o += "<p>None logged (set train.layer_stats_every to record them).</p>\n";

  // sample grids
  o += "<h2>Samples</h2>\n";
  for (const RunRecord& r : runs) {
    std::string kind;
    for (const auto& g : r.grids) {
      if (g.kind != kind) {
        if (!kind.empty()) o += "</div>\n";
        kind = g.kind;
        o += "<h3>" + esc(r.name) + ": " + esc(kind) + "</h3>\n<div class=\"strip\" data-run=\"" +
             esc(r.name) + "\" data-kind=\"" + esc(kind) + "\">\n";
      }
      o += "<figure><img alt=\"step " + std::to_string(g.step) + "\" src=\"data:image/png;base64," +
           base64_encode(read_bytes(g.path)) + "\"><figcaption>step " + std::to_string(g.step) +
           "</figcaption></figure>\n";
    }
    if (!kind.empty()) o += "</div>\n";
    if (r.grids.empty()) o += "<p>" + esc(r.name) + ": no sample grids yet.</p>\n";
  }

  // evaluations
  o += "<h2>Evaluations</h2>\n";
  std::map<std::string, svg::LinePlot> curves;  // by metric
  std::string rows;
  for (size_t k = 0; k < runs.size(); ++k)
    for (const json& e : runs[k].evals) {
      const std::string metric = e.value("metric", "?");
      const int64_t step =
          e.contains("checkpoint") ? e["checkpoint"].value("step", int64_t(-1)) : int64_t(-1);
      const int64_t nfe = e.value("nfe", int64_t(0));
      const std::string weights =
          e.contains("checkpoint") ? e["checkpoint"].value("weights", "") : "";
      rows += "<tr><td class=\"l\">" + esc(runs[k].name) + "</td><td>" + std::to_string(step) +
              "</td><td class=\"l\">" + esc(metric) + "</td><td>" + std::to_string(nfe) +
              "</td><td class=\"l\">" + esc(weights) + "</td><td>" +
              std::to_string(e.value("n", int64_t(0))) + "</td><td>" +
              fmt(e["value"].get<double>(), "%.5g") + "</td><td class=\"l\">" +
              esc(e["file"].get<std::string>()) + "</td></tr>\n";
      svg::LinePlot& p = curves[metric];
      p.id = "eval-" + metric;
      p.title = metric + " against the step";
      p.x_label = "step";
      p.y_label = metric;
      const std::string label = runs[k].name + ", NFE " + std::to_string(nfe);
      auto it = std::find_if(p.series.begin(), p.series.end(),
                             [&](const svg::Series& s) { return s.label == label; });
      if (it == p.series.end()) {
        p.series.push_back({.label = label, .colour = svg::series_colour(k), .width = 2.0});
        it = p.series.end() - 1;
      }
      it->x.push_back(double(step));
      it->y.push_back(e["value"].get<double>());
    }
  if (rows.empty()) {
    o += "<p>None yet (cm eval RUN_DIR writes eval-*.json into the run directory).</p>\n";
  } else {
    o += "<table><tr><th class=\"l\">run</th><th>step</th><th class=\"l\">metric</th><th>NFE</th>"
         "<th class=\"l\">weights</th><th>images</th><th>value</th><th "
         "class=\"l\">file</th></tr>\n" +
         rows + "</table>\n<div class=\"plots\">\n";
    for (auto& [m, p] : curves) o += svg::line_plot(p);
    o += "</div>\n";
  }

  // configuration and provenance
  o += "<h2>Configuration and provenance</h2>\n";
  for (const RunRecord& r : runs) {
    o += "<h3>" + esc(r.name) + "</h3>\n<p>" +
         esc(fs::absolute(r.path).lexically_normal().string()) + "</p>\n";
    if (r.starts.empty()) {
      o += "<p>No start records in metrics.jsonl (a run of a cm before they were written).</p>\n";
    } else {
      o += "<table><tr><th>from step</th><th class=\"l\">date</th><th class=\"l\">cm "
           "revision</th><th class=\"l\">device</th><th>ranks</th><th class=\"l\">host</th></tr>\n";
      for (const json& s : r.starts)
        o += "<tr><td>" + std::to_string(s.value("from_step", int64_t(0))) +
             "</td><td class=\"l\">" + esc(s.value("date", "")) + "</td><td class=\"l\">" +
             esc(s.value("cm_revision", "")) + "</td><td class=\"l\">" +
             esc(s.value("device", "")) + "</td><td>" +
             std::to_string(s.value("world_size", int64_t(1))) + "</td><td class=\"l\">" +
             esc(s.value("host", "")) + "</td></tr>\n";
      o += "</table>\n";
    }
    o += "<details><summary>config.json</summary><pre>" + esc(r.config.dump(2)) +
         "</pre></details>\n";
  }
  o += "</body>\n</html>\n";
  return o;
}

int run_report(const ReportCommand& c) {
  CM_CHECK(!c.runs.empty(), "cm report needs at least one RUN_DIR");
  const fs::path out = c.out ? fs::path(*c.out) : fs::path(c.runs.front()) / "report.html";
  for (;;) {
    std::vector<RunRecord> runs;
    for (const std::string& d : c.runs) runs.push_back(read_run(d));
    bool complete = true;
    for (const auto& r : runs) complete = complete && r.complete();
    // a live page reloads itself; the last one, of finished runs, does not
    nn::write_atomic(out.string(), render_report(runs, c.watch > 0 && !complete ? c.watch : 0));
    std::printf(
        "cm report: wrote %s (%zu run%s)%s\n", out.string().c_str(), runs.size(),
        runs.size() == 1 ? "" : "s",
        c.watch > 0 && !complete
            ? ("; rewriting every " + std::to_string(c.watch) + " s until the runs end").c_str()
            : "");
    std::fflush(stdout);
    if (c.watch <= 0 || complete) return 0;
    std::this_thread::sleep_for(std::chrono::seconds(c.watch));
  }
}

}  // namespace cm::runner
