// `cm report` (runner/report.h) and its plots (runner/svg.h): tick positions and escaping by hand;
// every series of a plot drawn with exactly its drawable points (breaks at non-finite values and
// at non-positive ones on a log axis); heatmaps with one hover-titled cell per (row, column);
// run directories read as written (a torn last line skipped, a malformed line an error naming the
// file and line); the page of a real tiny run holding every plot with one point per logged step,
// every sample grid as the PNG's own bytes, and the evaluations. The page in a real browser:
// tests/report_browser.sh.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "runner/config.h"
#include "runner/progress.h"
#include "runner/report.h"
#include "runner/svg.h"
#include "runner/trainer.h"
#include "tests/helpers.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::runner;
namespace fs = std::filesystem;
using json = nlohmann::json;

#define CHECK_ERROR_MENTIONS(expr, ...)                                                           \
  do {                                                                                            \
    std::string _msg;                                                                             \
    try {                                                                                         \
      (void)(expr);                                                                               \
    } catch (const std::exception& e) {                                                           \
      _msg = e.what();                                                                            \
    }                                                                                             \
    CHECK_MESSAGE(!_msg.empty(), #expr " did not throw");                                         \
    for (const std::string& _part : std::vector<std::string>{__VA_ARGS__})                        \
      CHECK_MESSAGE(_msg.find(_part) != std::string::npos, #expr " gave '", _msg, "', lacking '", \
                    _part, "'");                                                                  \
  } while (0)

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p =
      fs::temp_directory_path() / ("cm_test_report_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The <path class="series"> elements of the <svg> with id `id`: label → data-n, and the count of
// M/L commands in its d (the two must agree).
struct PlotSeries {
  std::string label;
  int n = 0, vertices = 0;
};
std::vector<PlotSeries> series_of(const std::string& html, const std::string& id) {
  std::vector<PlotSeries> out;
  const size_t start = html.find("<svg class=\"plot\" id=\"" + id + "\"");
  if (start == std::string::npos) return out;
  const size_t end = html.find("</svg>", start);
  const std::string svg = html.substr(start, end - start);
  const std::regex path_re(
      "<path class=\"series\" data-series=\"\\d+\" data-label=\"([^\"]*)\" data-n=\"(\\d+)\"[^>]* "
      "d=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), path_re);
       it != std::sregex_iterator(); ++it) {
    PlotSeries s;
    s.label = (*it)[1];
    s.n = std::stoi((*it)[2]);
    const std::string d = (*it)[3];
    s.vertices =
        int(std::count_if(d.begin(), d.end(), [](char c) { return c == 'M' || c == 'L'; }));
    out.push_back(s);
  }
  return out;
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}

}  // namespace

TEST_SUITE("runner") {
  TEST_CASE("report svg: ticks at 1, 2 or 5 times a power of ten, decades on log axes") {
    CHECK(svg::ticks(0, 10, false) == std::vector<double>{0, 2, 4, 6, 8, 10});
    CHECK(svg::ticks(0.13, 0.61, false, 5) == std::vector<double>{0.2, 0.3, 0.4, 0.5, 0.6});
    CHECK(svg::ticks(-3, 3, false, 3) == std::vector<double>{-2, 0, 2});
    CHECK(svg::ticks(1e-3, 10, true) == std::vector<double>{1e-3, 1e-2, 1e-1, 1, 10});
    // under two decades: 1, 2, 5 steps
    const std::vector<double> t = svg::ticks(3, 60, true);
    CHECK(t == std::vector<double>{5, 10, 20, 50});
    CHECK(svg::ticks(1, 1, false).empty());
    CHECK(svg::ticks(0, NAN, false).empty());
    CHECK(svg::escape("a<b & \"c\" 'd'>") == "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;");
  }

  TEST_CASE("report svg: each series holds exactly its drawable points, broken where undefined") {
    svg::LinePlot p{.id = "t", .title = "T <1>", .x_label = "step", .y_label = "y", .log_y = true};
    p.series.push_back({.label = "a", .x = {1, 2, 3, 4, 5}, .y = {1, 2, NAN, 4, 5}});
    p.series.push_back({.label = "b&c", .x = {1, 2, 3}, .y = {-1, 0, 3}});  // log: only 3 > 0
    p.series.push_back({.label = "", .x = {1, 2}, .y = {INFINITY, NAN}});   // nothing drawable
    p.marks_x = {2, 4};
    const std::string s = svg::line_plot(p);
    const auto ss = series_of(s, "t");
    REQUIRE(ss.size() == 3);
    CHECK(ss[0].label == "a");
    CHECK(ss[0].n == 4);
    CHECK(ss[0].vertices == 4);
    CHECK(count(s.substr(s.find("data-label=\"a\"")), "d=\"M") >= 1);
    CHECK(ss[1].label == "b&amp;c");
    CHECK(ss[1].n == 1);
    CHECK(ss[1].vertices == 1);
    CHECK(ss[2].n == 0);
    CHECK(ss[2].vertices == 0);
    // the NaN breaks series a into two pieces: two M's
    const size_t a = s.find("data-label=\"a\"");
    const std::string da = s.substr(s.find(" d=\"", a) + 4,
                                    s.find('"', s.find(" d=\"", a) + 4) - (s.find(" d=\"", a) + 4));
    CHECK(std::count(da.begin(), da.end(), 'M') == 2);
    CHECK(count(s, "class=\"mark\"") == 2);
    CHECK(s.find("T &lt;1&gt;") != std::string::npos);
    CHECK(count(s, "class=\"legend\"") == 2);  // the unlabelled series has no legend entry
    // y values map monotonically: a larger value is higher (a smaller pixel y)
    svg::LinePlot q{.id = "q", .series = {{.label = "s", .x = {0, 1}, .y = {1, 2}}}};
    const std::string sq = svg::line_plot(q);
    const std::smatch m = [&] {
      std::smatch r;
      std::regex_search(sq, r, std::regex("d=\"M([0-9.]+) ([0-9.]+)L([0-9.]+) ([0-9.]+)\""));
      return r;
    }();
    REQUIRE(m.size() == 5);
    CHECK(std::stod(m[1]) < std::stod(m[3]));
    CHECK(std::stod(m[2]) > std::stod(m[4]));
    // no drawable point at all: the plot says so
    svg::LinePlot e{.id = "e", .series = {{.label = "s", .x = {1}, .y = {NAN}}}};
    CHECK(svg::line_plot(e).find("no data") != std::string::npos);
  }

  TEST_CASE("report svg: a heatmap has one titled cell per row and column") {
    svg::Heatmap h{.id = "h",
                   .title = "grad",
                   .rows = {"enc.conv.weight", "dec<1>"},
                   .columns = {10, 20, 30},
                   .values = {{1, 10, 100}, {NAN, 0, 5}},
                   .value_label = "grad_norm"};
    const std::string s = svg::heatmap(h);
    CHECK(count(s, "<rect class=\"cell\"") == 6);
    CHECK(s.find("<title>enc.conv.weight, step 20: grad_norm 10</title>") != std::string::npos);
    CHECK(s.find("<title>dec&lt;1&gt;, step 10: grad_norm missing</title>") != std::string::npos);
    CHECK(count(s, "fill=\"#ccc\"") == 2);  // NaN, and 0 on the log scale
    CHECK(s.find("data-rows=\"2\" data-columns=\"3\"") != std::string::npos);
    // the smallest value gets viridis' first colour, the largest its last
    CHECK(s.find("grad_norm 1</title>") != std::string::npos);
    CHECK(s.find("fill=\"#440154\"><title>enc.conv.weight, step 10") != std::string::npos);
    CHECK(s.find("fill=\"#fde725\"><title>enc.conv.weight, step 30") != std::string::npos);
  }

  TEST_CASE("progress line: bar, count, rate and ETA") {
    CHECK(progress_bar(300, 1000, "images", 50) ==
          "[#########.....................] 300/1000 images  50 images/s  ETA 14s");
    CHECK(progress_bar(0, 4, "time points", 0) ==
          "[..............................] 0/4 time points  0 time points/s  ETA 0s");
    CHECK(progress_bar(10, 10, "steps", 2.5, "loss 0.1") ==
          "[##############################] 10/10 steps  loss 0.1  2.5 steps/s  ETA 0s");
    CHECK(format_duration(59.4) == "59s");
    CHECK(format_duration(185) == "3m05s");
    CHECK(format_duration(7620) == "2h07m");
    // off the terminal nothing is drawn
    TerminalProgress off(10, "images", false);
    off.update(5);
  }

  TEST_CASE("report: base64 of RFC 4648's test vectors") {
    CHECK(base64_encode("") == "");
    CHECK(base64_encode("f") == "Zg==");
    CHECK(base64_encode("fo") == "Zm8=");
    CHECK(base64_encode("foo") == "Zm9v");
    CHECK(base64_encode("foob") == "Zm9vYg==");
    CHECK(base64_encode("fooba") == "Zm9vYmE=");
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(base64_encode(std::string("\xff\x00\xfe", 3)) == "/wD+");
  }

  TEST_CASE(
      "report: a run directory is read as written, bad lines are errors naming file and line") {
    const fs::path dir = temp_dir("read") / "00007-ct-x";
    fs::create_directories(dir / "samples");
    write_text(dir / "config.json", R"({"mode": "ct", "train": {"steps": 30}})");
    write_text(
        dir / "metrics.jsonl",
        R"({"event": "start", "from_step": 0, "date": "D", "cm_revision": "R", "device": "cpu"})"
        "\n"
        R"({"step": 10, "loss": 2.0, "grad_norm": 1.5, "lr": 0.1, "elapsed_s": 5, "skipped_steps": 0})"
        "\n"
        R"({"step": 10, "layer_stats": {"parameters": {"w": {"grad_norm": 3}}, "activations": {}}})"
        "\n"
        R"({"step": 20, "loss": 1.0, "elapsed_s": 9, "skipped_steps": 2, "mu": 0.5, "N": 11})"
        "\n"
        R"({"event": "start", "from_step": 20})"
        "\n"
        R"({"step": 30, "loss": 0.5, "elapsed_s": 4, "skipped_steps": 2})"
        "\n"
        R"({"step": 40, "lo)");  // torn: a live run writing
    write_text(dir / "samples" / "grid-00000020-1step.png", "png-bytes-20");
    write_text(dir / "samples" / "grid-00000010-1step.png", "png-bytes-10");
    write_text(dir / "samples" / "grid-00000010-2step.png", "png-bytes-10b");
    write_text(dir / "samples" / "notes.txt", "ignored");
    write_text(dir / "eval-20-domain-1step.json",
               R"({"metric": "domain", "value": 12.5, "nfe": 1, "checkpoint": {"step": 20}})");
    const RunRecord r = read_run(dir);
    CHECK(r.name == "00007-ct-x");
    CHECK(r.total_steps == 30);
    REQUIRE(r.scalars.size() == 3);
    CHECK(r.scalars[0].step == 10);
    CHECK(r.scalars[0].grad_norm == 1.5);
    CHECK(std::isnan(r.scalars[1].grad_norm));
    CHECK(r.scalars[1].mu == 0.5);
    CHECK(r.scalars[1].n == 11);
    CHECK(r.scalars[0].wall_s == 5);
    CHECK(r.scalars[1].wall_s == 9);
    CHECK(r.scalars[2].wall_s == 13);  // the resumed session's 4 s after the first's 9
    CHECK(r.skipped_at == std::vector<int64_t>{20});
    CHECK(r.complete());
    REQUIRE(r.layers.size() == 1);
    CHECK(r.layers[0].parameters["w"]["grad_norm"] == 3);
    REQUIRE(r.starts.size() == 2);
    CHECK(r.starts[1]["from_step"] == 20);
    REQUIRE(r.grids.size() == 3);
    CHECK(r.grids[0].kind == "1step");
    CHECK(r.grids[0].step == 10);
    CHECK(r.grids[1].step == 20);
    CHECK(r.grids[2].kind == "2step");
    REQUIRE(r.evals.size() == 1);
    CHECK(r.evals[0]["value"] == 12.5);

    const std::string html = render_report({r, r});
    // one series per run (loss: raw + smoothed each), a point per scalar line
    for (const std::string id : {"grad-norm", "lr", "mu", "n", "loss-wall"})
      CHECK_MESSAGE(series_of(html, id).size() == 2, id);
    // no line logged a throughput: the plot is there and says so
    const size_t ips = html.find("<svg class=\"plot\" id=\"images-per-s\"");
    REQUIRE(ips != std::string::npos);
    CHECK(html.substr(ips, html.find("</svg>", ips) - ips).find("no data") != std::string::npos);
    CHECK(series_of(html, "loss").size() == 4);
    CHECK(series_of(html, "loss")[0].n == 3);
    CHECK(series_of(html, "loss")[1].n == 3);
    CHECK(series_of(html, "grad-norm")[0].n == 1);  // only the first line has a gradient norm
    CHECK(series_of(html, "mu")[0].n == 1);
    CHECK(series_of(html, "eval-domain").size() == 1);  // same label twice: one series, 2 points
    CHECK(series_of(html, "eval-domain")[0].n == 2);
    CHECK(html.find("data:image/png;base64," + base64_encode("png-bytes-20")) != std::string::npos);
    CHECK(count(html, "<img ") == 6);
    CHECK(html.find("class=\"heatmap\" id=\"layers-0-parameters-grad_norm\"") != std::string::npos);
    CHECK(html.find("<title>w, step 10: grad_norm 3</title>") != std::string::npos);
    CHECK(count(html, "class=\"mark\"") >= 2);  // the skipped step, on the step plots
    CHECK(html.find("<td class=\"l\">R</td>") != std::string::npos);  // provenance
    CHECK(html.find("http-equiv=\"refresh\"") == std::string::npos);
    CHECK(render_report({r}, 30).find("<meta http-equiv=\"refresh\" content=\"30\">") !=
          std::string::npos);
    // nothing the page loads comes from elsewhere
    CHECK(html.find("src=\"http") == std::string::npos);
    CHECK(html.find("href=\"http") == std::string::npos);

    // a malformed line that is not the last, a field of the wrong type, no config.json
    std::string text = read_text(dir / "metrics.jsonl");
    write_text(dir / "metrics.jsonl", "{\"step\": 1, \"loss\": 1}\nnot json\n{\"step\": 2}\n");
    CHECK_ERROR_MENTIONS(read_run(dir), (dir / "metrics.jsonl").string() + ":2", "not a JSON");
    write_text(dir / "metrics.jsonl", "{\"step\": 1, \"loss\": \"high\"}\n");
    CHECK_ERROR_MENTIONS(read_run(dir), "metrics.jsonl:1", "\"loss\"", "\"high\"", "a number");
    write_text(dir / "metrics.jsonl", "{\"step\": 1.5, \"loss\": 1}\n");
    CHECK_ERROR_MENTIONS(read_run(dir), "metrics.jsonl:1", "\"step\"", "an integer");
    write_text(dir / "metrics.jsonl", "");
    write_text(dir / "eval-bad.json", "{\"metric\": \"fid\"}");
    CHECK_ERROR_MENTIONS(read_run(dir), "eval-bad.json", "\"value\"");
    write_text(dir / "eval-bad.json", R"({"value": 1, "checkpoint": {"step": "ten"}})");
    CHECK_ERROR_MENTIONS(read_run(dir), "eval-bad.json", "\"step\"", "\"ten\"", "an integer");
    fs::remove(dir / "eval-bad.json");
    fs::remove(dir / "config.json");
    CHECK_ERROR_MENTIONS(read_run(dir), dir.string(), "no config.json");
    CHECK_ERROR_MENTIONS(read_run(dir / "nope"), "not a run directory");
    fs::remove_all(dir.parent_path());
  }

  TEST_CASE("report: the page of a real tiny run plots one point per logged step") {
    const fs::path root = temp_dir("real");
    json j = test::tiny_run_config("ct", 4);
    j["train"]["layer_stats_every"] = 2;
    j["train"]["sample_every"] = 2;
    const RunConfig cfg = typed_config(resolve_config(j, "test.json"));
    // what cm train writes, by the trainer: config, metrics lines, layer stats, grids
    const fs::path dir = root / "00000-ct-tiny";
    fs::create_directories(dir / "samples");
    write_text(dir / "config.json", cfg.resolved.dump(2));
    Trainer t(cfg, std::nullopt, nullptr);
    std::string metrics;
    for (int k = 1; k <= 4; ++k) {
      const StepStats st = t.train_step();
      metrics += json({{"step", k},
                       {"loss", st.loss},
                       {"grad_norm", st.grad_norm},
                       {"lr", st.lr},
                       {"images_per_s", 10.0},
                       {"mem_peak", 1 << 20},
                       {"elapsed_s", k},
                       {"mu", st.mu},
                       {"N", st.n},
                       {"skipped_steps", 0}})
                     .dump() +
                 "\n";
      if (k % 2 == 0) {
        metrics += json({{"step", k}, {"layer_stats", t.layer_stats()}}).dump() + "\n";
        t.write_sample_grids((dir / "samples").string());
      }
    }
    write_text(dir / "metrics.jsonl", metrics);
    const RunRecord r = read_run(dir);
    CHECK(r.scalars.size() == 4);
    CHECK(r.layers.size() == 2);
    CHECK(r.grids.size() == 4);  // 1step and 2step at steps 2 and 4
    const std::string html = render_report({r});
    for (const std::string id : {"loss", "grad-norm", "lr", "mu", "n", "images-per-s", "memory"}) {
      const auto s = series_of(html, id);
      REQUIRE_MESSAGE(!s.empty(), id);
      CHECK_MESSAGE(s.back().n == 4, id);
      CHECK_MESSAGE(s.back().vertices == 4, id);
    }
    // every parameter of the network is a row of the gradient heatmap, with both steps
    const size_t params = t.online().named_parameters().size();
    const std::string tag = "class=\"heatmap\" id=\"layers-0-parameters-grad_norm\"";
    const size_t at = html.find(tag);
    REQUIRE(at != std::string::npos);
    const std::string hm = html.substr(at, html.find("</svg>", at) - at);
    CHECK(hm.find("data-rows=\"" + std::to_string(params) + "\" data-columns=\"2\"") !=
          std::string::npos);
    CHECK(count(hm, "<rect class=\"cell\"") == int(2 * params));
    // the grids are the files' own bytes
    for (const auto& g : r.grids)
      CHECK(html.find(base64_encode(read_text(g.path))) != std::string::npos);
    fs::remove_all(root);
  }
}
