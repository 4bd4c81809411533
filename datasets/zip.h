// A minimal ZIP reader: the central directory, and entries stored (method 0) or deflated (method 8,
// zlib raw inflate), each checked against its CRC-32. Enough for EDM's dataset zips and NumPy's
// .npz. ZIP64 archives, multi-disk archives and encrypted entries are refused with a clear message.
// Every offset and size read from the file is bounds-checked: a malformed archive is a cm::Error
// naming the file (and the entry), never a crash or an unbounded allocation.
//
// Opening refuses a path that is not a regular file (a FIFO cannot block it) and an archive that
// holds two entries of the same name (which one a reader picks would be arbitrary). An entry
// declaring more than kMaxEntryBytes, or more than deflate can produce from its compressed size
// (1032:1), is refused before anything is allocated, and inflating stops at the declared size: a
// zip bomb ends in a cm::Error, not in an exhausted memory.
//
// Sizes come from the central directory. The local header is only used to find where an entry's
// data begins, so NumPy's .npz (whose local headers carry ZIP64 extras even for small entries)
// reads fine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace cm::data {

// The largest uncompressed entry accepted: 3 GiB, twice one part of downsampled ImageNet 64×64
// (data.npy of 128,116 images, 1.5 GiB), the largest entry cm reads from a zip.
constexpr uint64_t kMaxEntryBytes = uint64_t(3) << 30;

struct ZipEntry {
  std::string name;  // as stored, '/'-separated
  uint16_t method = 0;
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
  bool is_directory() const { return !name.empty() && name.back() == '/'; }
};

class ZipReader {
 public:
  // Opens the archive and reads its central directory.
  explicit ZipReader(const std::string& path);
  ~ZipReader();
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

  const std::string& path() const { return path_; }
  // The entries in central-directory order.
  const std::vector<ZipEntry>& entries() const { return entries_; }
  // The entry with this exact name, or null.
  const ZipEntry* find(const std::string& name) const;
  // The uncompressed bytes of an entry (CRC-checked). Safe to call from several threads.
  std::vector<uint8_t> read(const ZipEntry& entry) const;
  // The same by name; a missing entry is an error naming the archive and the entry.
  std::vector<uint8_t> read(const std::string& name) const;
  // Where an entry's data starts in the archive: its local header checked (signature, name) and
  // its data within the entries area. For a stored (uncompressed) entry that is the entry itself,
  // which a caller may map instead of reading.
  uint64_t data_offset(const ZipEntry& entry) const;

 private:
  void read_at(uint64_t offset, void* dst, size_t n, const std::string& what) const;

  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t central_dir_offset_ = 0;  // entries' data must end before it
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_;  // name -> first entry with that name
};

}  // namespace cm::data
