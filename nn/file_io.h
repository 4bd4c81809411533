// Reading files safely: cm opens what it reads without blocking and refuses anything that is not a
// regular file (a FIFO, a device, a directory, a socket) with an error naming the path, so that a
// wrong path can never hang a run in open() or read(). JSON text is parsed with the nesting
// bounded, so that a hostile or corrupt file ends in a cm::Error instead of a stack overflow.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace cm::nn {

// Opens `path` read-only (O_NONBLOCK, so that a FIFO cannot block, then cleared), checks with
// fstat that it is a regular file and returns the descriptor (the caller closes it). `what` names
// the file's role in errors ("checkpoint", "load_idx", "--ref"): "<what>: '<path>' is a FIFO, not
// a regular file".
int open_regular_file(const std::string& path, const std::string& what);

// Throws the same error as open_regular_file when `path` exists but is not a regular file, or
// does not exist; opens nothing (a check before a slow step, not a substitute for opening safely).
void require_regular_file(const std::string& path, const std::string& what);

// The whole content of the regular file `path` (read through open_regular_file).
std::vector<uint8_t> read_file_bytes(const std::string& path, const std::string& what);
std::string read_file_text(const std::string& path, const std::string& what);

// The deepest nesting of arrays and objects cm accepts in any JSON text it reads. cm's own files
// nest at most 4 levels; the bound keeps nlohmann's recursive copy and destruction within a stack.
constexpr int kMaxJsonDepth = 128;

// Parses JSON text from `source` (named in errors): nesting deeper than max_depth, syntax errors,
// numbers out of double range (1e999) and invalid UTF-8 are a cm::Error "<source>: invalid JSON:
// ...", with the line and column where nlohmann reports them.
nlohmann::json parse_json(std::string_view text, const std::string& source,
                          int max_depth = kMaxJsonDepth);

}  // namespace cm::nn
