#include "runner/svg.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>

namespace cm::runner::svg {

namespace {

std::string num(double v) {  // coordinates: two decimals are far below a pixel
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

std::string label_of(double v) {  // tick labels
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string value_of(double v) {  // hover texts
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

// Maps data values to pixels along one axis.
struct Axis {
  double lo = 0, hi = 1;  // in data units (log10 of them on a log axis)
  bool log = false;
  double px0 = 0, px1 = 1;
  bool usable(double v) const { return std::isfinite(v) && (!log || v > 0); }
  double t(double v) const { return log ? std::log10(v) : v; }
  double operator()(double v) const { return px0 + (t(v) - lo) / (hi - lo) * (px1 - px0); }
};

// The range of the usable values, padded; a single value gets a unit-wide (or decade-wide) range.
bool fit(Axis& a, const std::vector<const std::vector<double>*>& values, bool pad) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto* v : values)
    for (double x : *v)
      if (a.usable(x)) {
        lo = std::min(lo, a.t(x));
        hi = std::max(hi, a.t(x));
      }
  if (!(lo <= hi)) return false;
  if (hi - lo < 1e-12 * std::max(1.0, std::fabs(hi))) {
    // one value: a decade around it (log), ±10 % of it, or ±0.5 around 0
    const double m = a.log ? 0.5 : lo != 0 ? std::fabs(lo) * 0.1 : 0.5;
    lo -= m;
    hi += m;
  } else if (pad) {
    const double m = (hi - lo) * 0.04;
    lo -= m;
    hi += m;
  }
  a.lo = lo;
  a.hi = hi;
  return true;
}

// Viridis, sampled at nine points and interpolated linearly.
std::string viridis(double t) {
  static const std::array<std::array<double, 3>, 9> c = {{{68, 1, 84},
                                                          {71, 44, 122},
                                                          {59, 81, 139},
                                                          {44, 113, 142},
                                                          {33, 144, 141},
                                                          {39, 173, 129},
                                                          {92, 200, 99},
                                                          {170, 220, 50},
                                                          {253, 231, 37}}};
  t = std::clamp(t, 0.0, 1.0) * double(c.size() - 1);
  const size_t i = std::min(size_t(t), c.size() - 2);
  const double f = t - double(i);
  char b[16];
  std::snprintf(b, sizeof b, "#%02x%02x%02x",
                int(std::lround(c[i][0] + f * (c[i + 1][0] - c[i][0]))),
                int(std::lround(c[i][1] + f * (c[i + 1][1] - c[i][1]))),
                int(std::lround(c[i][2] + f * (c[i + 1][2] - c[i][2]))));
  return b;
}

}  // namespace

std::string escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char ch : s) switch (ch) {
      case '&':
        o += "&amp;";
        break;
      case '<':
        o += "&lt;";
        break;
      case '>':
        o += "&gt;";
        break;
      case '"':
        o += "&quot;";
        break;
      case '\'':
        o += "&#39;";
        break;
      default:
        o += ch;
    }
  return o;
}

std::string series_colour(size_t k) {
  static const char* c[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                            "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
  return c[k % 10];
}

std::vector<double> ticks(double lo, double hi, bool log, int target) {
  std::vector<double> out;
  if (!(lo < hi) || !std::isfinite(lo) || !std::isfinite(hi)) return out;
  if (log) {  // lo, hi are values (> 0)
    const double a = std::log10(lo), b = std::log10(hi);
    const int step = std::max(1, int(std::ceil((b - a) / std::max(target, 1))));
    for (int e = int(std::ceil(a - 1e-9)); e <= int(std::floor(b + 1e-9)); e += step)
      out.push_back(std::pow(10.0, e));
    if (out.size() < 3) {
      out.clear();
      for (int e = int(std::floor(a)) - 1; e <= int(std::ceil(b)); ++e)
        for (double m : {1.0, 2.0, 5.0}) {
          const double v = m * std::pow(10.0, e);
          if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push_back(v);
        }
    }
    if (out.size() < 3) {  // within a factor of a few: linear ticks read better
      out.clear();
      for (double v : ticks(lo, hi, false, target))
        if (v > 0) out.push_back(v);
    }
    return out;
  }
  const double raw = (hi - lo) / std::max(target, 1);
  const int e = int(std::floor(std::log10(raw)));
  const double mag = std::pow(10.0, e);
  double m = 10;
  for (double c : {1.0, 2.0, 5.0})
    if (c * mag >= raw) {
      m = c;
      break;
    }
  const double step = m * mag;
  // k·m·10^e computed as one rounding (k·m exact, then one multiplication or division by a power
  // of ten), so that 3 × 0.1 comes out as 0.3
  const double p10 = std::pow(10.0, std::abs(e));
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; ++k)
    out.push_back(e >= 0 ? k * m * p10 : k * m / p10);
  return out;
}

std::string line_plot(const LinePlot& p) {
  const double L = 70, R = 14, T = 30, B = 42;
  const double W = p.width, H = p.height;
  Axis ax{.log = p.log_x, .px0 = L, .px1 = W - R};
  Axis ay{.log = p.log_y, .px0 = H - B, .px1 = T};
  std::vector<const std::vector<double>*> xs, ys;
  for (const Series& s : p.series) {
    xs.push_back(&s.x);
    ys.push_back(&s.y);
  }
  const bool have_x = fit(ax, xs, false), have_y = fit(ay, ys, true);
  std::string o = "<svg class=\"plot\" id=\"" + escape(p.id) +
                  "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(W) + "\" height=\"" +
                  num(H) + "\" viewBox=\"0 0 " + num(W) + " " + num(H) + "\" data-log-x=\"" +
                  (p.log_x ? "1" : "0") + "\" data-log-y=\"" + (p.log_y ? "1" : "0") + "\">\n";
  o += "<rect x=\"0\" y=\"0\" width=\"" + num(W) + "\" height=\"" + num(H) + "\" fill=\"#fff\"/>\n";
  o += "<text class=\"title\" x=\"" + num(L) +
       "\" y=\"18\" font-size=\"13\" font-weight=\"bold\">" + escape(p.title) + "</text>\n";
  o += "<rect x=\"" + num(L) + "\" y=\"" + num(T) + "\" width=\"" + num(W - L - R) +
       "\" height=\"" + num(H - T - B) + "\" fill=\"none\" stroke=\"#999\"/>\n";
  if (!have_x || !have_y) {
    o += "<text x=\"" + num((L + W - R) / 2) + "\" y=\"" + num((T + H - B) / 2) +
         "\" text-anchor=\"middle\" fill=\"#888\" font-size=\"12\">no data</text>\n</svg>\n";
    return o;
  }
  // grid and tick labels
  auto tick_values = [](const Axis& a) {
    return a.log ? ticks(std::pow(10.0, a.lo), std::pow(10.0, a.hi), true)
                 : ticks(a.lo, a.hi, false);
  };
  for (double v : tick_values(ax)) {
    const double x = ax(v);
    o += "<line x1=\"" + num(x) + "\" y1=\"" + num(T) + "\" x2=\"" + num(x) + "\" y2=\"" +
         num(H - B) + "\" stroke=\"#eee\"/>\n<text x=\"" + num(x) + "\" y=\"" + num(H - B + 14) +
         "\" text-anchor=\"middle\" font-size=\"10\">" + escape(label_of(v)) + "</text>\n";
  }
  for (double v : tick_values(ay)) {
    const double y = ay(v);
    o += "<line x1=\"" + num(L) + "\" y1=\"" + num(y) + "\" x2=\"" + num(W - R) + "\" y2=\"" +
         num(y) + "\" stroke=\"#eee\"/>\n<text x=\"" + num(L - 4) + "\" y=\"" + num(y + 3) +
         "\" text-anchor=\"end\" font-size=\"10\">" + escape(label_of(v)) + "</text>\n";
  }
  o += "<text x=\"" + num((L + W - R) / 2) + "\" y=\"" + num(H - 8) +
       "\" text-anchor=\"middle\" font-size=\"11\">" + escape(p.x_label) +
       (p.log_x ? " (log)" : "") + "</text>\n";
  o += "<text transform=\"translate(14 " + num((T + H - B) / 2) +
       ") rotate(-90)\" text-anchor=\"middle\" font-size=\"11\">" + escape(p.y_label) +
       (p.log_y ? " (log)" : "") + "</text>\n";
  // marks
  for (double m : p.marks_x) {
    if (!ax.usable(m)) continue;
    const double x = ax(m);
    o += "<line class=\"mark\" x1=\"" + num(x) + "\" y1=\"" + num(T) + "\" x2=\"" + num(x) +
         "\" y2=\"" + num(H - B) + "\" stroke=\"#e00\" stroke-dasharray=\"3 2\"><title>" +
         escape(p.marks_label) + " " + value_of(m) + "</title></line>\n";
  }
  // series, clipped to the plot area
  o += "<clipPath id=\"" + escape(p.id) + "-clip\"><rect x=\"" + num(L) + "\" y=\"" + num(T) +
       "\" width=\"" + num(W - L - R) + "\" height=\"" + num(H - T - B) + "\"/></clipPath>\n";
  o += "<g clip-path=\"url(#" + escape(p.id) + "-clip)\">\n";
  for (size_t k = 0; k < p.series.size(); ++k) {
    const Series& s = p.series[k];
    std::string d;
    size_t n = 0;
    bool pen = false;
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!ax.usable(s.x[i]) || !ay.usable(s.y[i])) {
        pen = false;
        continue;
      }
      d += (pen ? "L" : "M") + num(ax(s.x[i])) + " " + num(ay(s.y[i]));
      pen = true;
      ++n;
    }
    const std::string colour = s.colour.empty() ? series_colour(k) : s.colour;
    o += "<path class=\"series\" data-series=\"" + std::to_string(k) + "\" data-label=\"" +
         escape(s.label) + "\" data-n=\"" + std::to_string(n) + "\" fill=\"none\" stroke=\"" +
         colour + "\" stroke-width=\"" + num(s.width) + "\" stroke-opacity=\"" + num(s.opacity) +
         "\" d=\"" + d + "\"><title>" + escape(s.label) + "</title></path>\n";
  }
  o += "</g>\n";
  // legend (top right), one entry per labelled series; a click toggles it (the page's script)
  double ly = T + 12;
  for (size_t k = 0; k < p.series.size(); ++k) {
    const Series& s = p.series[k];
    if (s.label.empty()) continue;
    const std::string colour = s.colour.empty() ? series_colour(k) : s.colour;
    const double lx = W - R - 8;
    o += "<g class=\"legend\" data-series=\"" + std::to_string(k) + "\"><line x1=\"" +
         num(lx - 18) + "\" y1=\"" + num(ly - 4) + "\" x2=\"" + num(lx - 4) + "\" y2=\"" +
         num(ly - 4) + "\" stroke=\"" + colour + "\" stroke-width=\"3\"/><text x=\"" +
         num(lx - 22) + "\" y=\"" + num(ly) + "\" text-anchor=\"end\" font-size=\"10\">" +
         escape(s.label) + "</text></g>\n";
    ly += 13;
  }
  o += "</svg>\n";
  return o;
}

std::string heatmap(const Heatmap& h) {
  const size_t nr = h.rows.size(), nc = h.columns.size();
  const bool named = nr <= 64;
  const double L = named ? 230 : 20, R = 90, T = 30, B = 34;
  const double cell_h = nr <= 40 ? 10 : nr <= 120 ? 5 : 3;
  const double W = h.width, H = T + B + cell_h * double(std::max<size_t>(nr, 1));
  const double cell_w = nc ? (W - L - R) / double(nc) : 0;
  // the colour range over the usable values
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  auto usable = [&](double v) { return std::isfinite(v) && (!h.log || v > 0); };
  auto t = [&](double v) { return h.log ? std::log10(v) : v; };
  for (const auto& row : h.values)
    for (double v : row)
      if (usable(v)) {
        lo = std::min(lo, t(v));
        hi = std::max(hi, t(v));
      }
  std::string o = "<svg class=\"heatmap\" id=\"" + escape(h.id) +
                  "\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(W) + "\" height=\"" +
                  num(H) + "\" data-rows=\"" + std::to_string(nr) + "\" data-columns=\"" +
                  std::to_string(nc) + "\">\n";
  o += "<rect x=\"0\" y=\"0\" width=\"" + num(W) + "\" height=\"" + num(H) + "\" fill=\"#fff\"/>\n";
  o += "<text x=\"" + num(L) + "\" y=\"18\" font-size=\"13\" font-weight=\"bold\">" +
       escape(h.title) + "</text>\n";
  if (!(lo <= hi) || nr == 0 || nc == 0) {
    o += "<text x=\"" + num(L) + "\" y=\"" + num(T + 14) +
         "\" fill=\"#888\" font-size=\"12\">no data</text>\n</svg>\n";
    return o;
  }
  const double span = hi - lo > 0 ? hi - lo : 1;
  for (size_t r = 0; r < nr; ++r) {
    const double y = T + cell_h * double(r);
    if (named)
      o += "<text x=\"" + num(L - 4) + "\" y=\"" + num(y + cell_h - 1) +
           "\" text-anchor=\"end\" font-size=\"" + num(std::min(cell_h, 9.0)) + "\">" +
           escape(h.rows[r]) + "</text>\n";
    for (size_t c = 0; c < nc; ++c) {
      const double v = r < h.values.size() && c < h.values[r].size()
                           ? h.values[r][c]
                           : std::numeric_limits<double>::quiet_NaN();
      const std::string fill = usable(v) ? viridis((t(v) - lo) / span) : "#ccc";
      o += "<rect class=\"cell\" x=\"" + num(L + cell_w * double(c)) + "\" y=\"" + num(y) +
           "\" width=\"" + num(cell_w + 0.3) + "\" height=\"" + num(cell_h) + "\" fill=\"" + fill +
           "\"><title>" + escape(h.rows[r]) + ", step " + value_of(h.columns[c]) + ": " +
           escape(h.value_label) + " " + (std::isfinite(v) ? value_of(v) : "missing") +
           "</title></rect>\n";
    }
  }
  // step labels at the first, middle and last column
  for (size_t c : {size_t(0), nc / 2, nc - 1})
    o += "<text x=\"" + num(L + cell_w * (double(c) + 0.5)) + "\" y=\"" +
         num(T + cell_h * double(nr) + 14) + "\" text-anchor=\"middle\" font-size=\"10\">" +
         value_of(h.columns[c]) + "</text>\n";
  o += "<text x=\"" + num((L + W - R) / 2) + "\" y=\"" + num(H - 4) +
       "\" text-anchor=\"middle\" font-size=\"11\">step</text>\n";
  // colour bar
  const double bx = W - R + 12, bh = std::min(120.0, H - T - B);
  for (int i = 0; i < 20; ++i)
    o += "<rect x=\"" + num(bx) + "\" y=\"" + num(T + bh * (19 - i) / 20.0) +
         "\" width=\"12\" height=\"" + num(bh / 20.0 + 0.3) + "\" fill=\"" + viridis(i / 19.0) +
         "\"/>\n";
  auto shown = [&](double x) { return value_of(h.log ? std::pow(10.0, x) : x); };
  o += "<text x=\"" + num(bx + 16) + "\" y=\"" + num(T + 8) + "\" font-size=\"10\">" + shown(hi) +
       "</text>\n<text x=\"" + num(bx + 16) + "\" y=\"" + num(T + bh) + "\" font-size=\"10\">" +
       shown(lo) + "</text>\n";
  o += "</svg>\n";
  return o;
}

}  // namespace cm::runner::svg
