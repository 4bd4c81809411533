// Atomic file replacement: write everything to a temporary file beside the target, flush it to
// disk, then rename it over the target. Readers see either the old file or the complete new one;
// a crash mid-write leaves the old file intact (and at worst a stray "<path>.tmp.<pid>.<n>").
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace cm::nn {

// Calls `write` with a stream open on "<path>.tmp.<pid>.<n>" in the target's directory (n counts
// calls in this process, so concurrent writers never share a temporary), then fflush + fsync,
// rename over `path`, and fsync of the directory so that the rename itself is durable.
// On any failure (including an exception thrown by `write`) the temporary is removed and a
// cm::Error naming the path and the system's reason (strerror) is thrown; `path` is untouched.
void write_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);

// The same for a byte buffer held in memory.
void write_atomic(const std::string& path, std::string_view bytes);

// Removes from `dir` (not recursively) the temporaries "<name>.tmp.<pid>.<n>" that write_atomic
// calls of processes no longer alive left behind (killed mid-write); a live process's are kept.
// Returns the paths removed.
std::vector<std::string> remove_stale_temporaries(const std::string& dir);

// Whether a process with this id is running (signal 0 reaches it, or it is someone else's).
bool process_alive(long pid);

// fwrite that throws a cm::Error naming `path` when fewer than `n` bytes were written.
void write_all(std::FILE* f, const void* data, size_t n, const std::string& path);

}  // namespace cm::nn
