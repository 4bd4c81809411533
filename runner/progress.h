// The progress line of the long commands on a terminal: `cm train` (steps), `cm sample` and
// `cm eval` (images), `cm edit` (time points of Algorithm 4). Redrawn in place on stdout when
// stdout is a terminal; nothing at all otherwise (logs and pipes get the commands' own lines).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cm::runner {

// "12s", "3m05s", "2h07m".
std::string format_duration(double seconds);

// "[#########.....................] 300/1000 images  42.5 images/s  ETA 16s" (30 cells).
std::string progress_bar(int64_t done, int64_t total, const std::string& unit, double rate,
                         const std::string& extra = "");

class TerminalProgress {
 public:
  // `enabled`: draw at all (default: stdout is a terminal).
  TerminalProgress(int64_t total, std::string unit, bool enabled = stdout_is_terminal());
  ~TerminalProgress();  // clears the line
  TerminalProgress(const TerminalProgress&) = delete;
  TerminalProgress& operator=(const TerminalProgress&) = delete;
  // `done` of the total are finished; redraws (at most ten times a second, and always at the end).
  void update(int64_t done);
  static bool stdout_is_terminal();

 private:
  int64_t total_;
  std::string unit_;
  bool enabled_, shown_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace cm::runner
