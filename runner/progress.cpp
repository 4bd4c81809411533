#include "runner/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace cm::runner {

std::string format_duration(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  return buf;
}

std::string progress_bar(int64_t done, int64_t total, const std::string& unit, double rate,
                         const std::string& extra) {
  const double frac = total > 0 ? std::clamp(double(done) / double(total), 0.0, 1.0) : 1.0;
  const int width = 30, filled = int(frac * width);
  char rate_s[48];
  std::snprintf(rate_s, sizeof rate_s, "%.3g %s/s", rate, unit.c_str());
  std::string s(1, '[');
  s.append(size_t(filled), '#');
  s.append(size_t(width - filled), '.');
  s += "] " + std::to_string(done) + "/" + std::to_string(total) + " " + unit;
  if (!extra.empty()) s += "  " + extra;
  s += std::string("  ") + rate_s + "  ETA " +
       format_duration(rate > 0 ? double(total - done) / rate : 0.0);
  return s;
}

bool TerminalProgress::stdout_is_terminal() {
  return ::isatty(STDOUT_FILENO);
}

TerminalProgress::TerminalProgress(int64_t total, std::string unit, bool enabled)
    : total_(total),
      unit_(std::move(unit)),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

TerminalProgress::~TerminalProgress() {
  if (shown_) {
    std::fputs("\r\033[K", stdout);
    std::fflush(stdout);
  }
}

void TerminalProgress::update(int64_t done) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? double(done) / elapsed : 0.0;
  std::fputs(("\r\033[K" + progress_bar(done, total_, unit_, rate)).c_str(), stdout);
  std::fflush(stdout);
  shown_ = true;
}

}  // namespace cm::runner
