// ZIP reading: end-of-central-directory search, central directory parse, and stored/deflated entry
// extraction (APPNOTE.TXT 6.3, sections 4.3.7, 4.3.12, 4.3.16). All integers are little-endian.
#include "datasets/zip.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "nn/file_io.h"
#include "tensor/error.h"

namespace cm::data {

namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSig = 0x06054b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kEndRecordSize = 22;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kZip64LocatorSize = 20;
// Deflate cannot expand data by more than about 1032:1; a larger declared ratio is a corrupt (or
// hostile) header, refused before allocating.
constexpr uint64_t kMaxDeflateRatio = 1032;

uint16_t le16(const uint8_t* p) {
  return uint16_t(p[0] | (p[1] << 8));
}
uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}

}  // namespace

ZipReader::ZipReader(const std::string& path) : path_(path) {
  // Never blocks: a FIFO, a device or a directory is refused naming the path.
  fd_ = nn::open_regular_file(path, "zip");
  try {
    struct stat st;
    CM_CHECK(::fstat(fd_, &st) == 0, "zip: cannot stat '", path, "': ", std::strerror(errno));
    file_size_ = uint64_t(st.st_size);
    CM_CHECK(file_size_ >= kEndRecordSize, "zip: '", path, "' is not a zip archive (", file_size_,
             " bytes, too short for an end-of-central-directory record)");

    // The end record is the last thing in the file, followed only by its comment (< 64 KiB).
    const uint64_t tail_size = std::min<uint64_t>(file_size_, kEndRecordSize + 0xffff);
    const uint64_t tail_start = file_size_ - tail_size;
    std::vector<uint8_t> tail(tail_size);
    read_at(tail_start, tail.data(), tail.size(), "end of archive");
    int64_t eocd = -1;
    for (int64_t p = int64_t(tail_size - kEndRecordSize); p >= 0; --p) {
      const uint8_t* r = tail.data() + p;
      if (le32(r) == kEndOfCentralDirSig &&
          uint64_t(p) + kEndRecordSize + le16(r + 20) == tail_size) {
        eocd = p;
        break;
      }
    }
    CM_CHECK(eocd >= 0, "zip: '", path,
             "' is not a zip archive or is truncated (no end-of-central-directory record)");
    const uint8_t* r = tail.data() + eocd;
    const uint64_t eocd_offset = tail_start + uint64_t(eocd);
    const uint16_t disk = le16(r + 4), cd_disk = le16(r + 6);
    const uint16_t disk_entries = le16(r + 8), total_entries = le16(r + 10);
    const uint32_t cd_size = le32(r + 12), cd_offset = le32(r + 16);
    const bool has_zip64_locator = eocd_offset >= kZip64LocatorSize && [&] {
      uint8_t sig[4];
      read_at(eocd_offset - kZip64LocatorSize, sig, 4, "end of archive");
      return le32(sig) == kZip64LocatorSig;
    }();
    CM_CHECK(!has_zip64_locator && total_entries != 0xffff && cd_size != 0xffffffffu &&
                 cd_offset != 0xffffffffu,
             "zip: '", path,
             "' is a ZIP64 archive, which is not supported (rewrite it as a plain "
             "zip: fewer than 65535 entries, each and the whole under 4 GiB)");
    CM_CHECK(disk == 0 && cd_disk == 0 && disk_entries == total_entries, "zip: '", path,
             "' is a multi-disk (split) archive, which is not supported");
    CM_CHECK(uint64_t(cd_offset) + cd_size <= eocd_offset, "zip: '", path,
             "' is corrupt: the central directory (offset ", cd_offset, ", ", cd_size,
             " bytes) runs past the end record at ", eocd_offset);
    central_dir_offset_ = cd_offset;

    std::vector<uint8_t> cd(cd_size);
    read_at(cd_offset, cd.data(), cd.size(), "central directory");
    size_t pos = 0;
    entries_.reserve(total_entries);
    for (uint32_t i = 0; i < total_entries; ++i) {
      CM_CHECK(cd_size - pos >= kCentralHeaderSize && le32(cd.data() + pos) == kCentralHeaderSig,
               "zip: '", path, "' is corrupt: central directory entry ", i, " of ", total_entries,
               " is truncated or has a bad signature");
      const uint8_t* h = cd.data() + pos;
      const size_t name_len = le16(h + 28), extra_len = le16(h + 30), comment_len = le16(h + 32);
      CM_CHECK(cd_size - pos - kCentralHeaderSize >= name_len + extra_len + comment_len, "zip: '",
               path, "' is corrupt: central directory entry ", i, " runs past the directory");
      ZipEntry e;
      e.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
      e.flags = le16(h + 8);
      e.method = le16(h + 10);
      e.crc32 = le32(h + 16);
      e.compressed_size = le32(h + 20);
      e.uncompressed_size = le32(h + 24);
      e.local_header_offset = le32(h + 42);
      CM_CHECK(e.compressed_size != 0xffffffffu && e.uncompressed_size != 0xffffffffu &&
                   e.local_header_offset != 0xffffffffu,
               "zip: '", path, "': entry '", e.name,
               "' uses ZIP64 sizes or offsets, which are not supported");
      CM_CHECK(le16(h + 34) == 0, "zip: '", path, "': entry '", e.name,
               "' starts on another disk (split archives are not supported)");
      // Two entries of one name would make find() (and numpy, and EDM's loader) pick one of them
      // silently: refused.
      CM_CHECK(index_.emplace(e.name, entries_.size()).second, "zip: '", path,
               "' holds two entries named '", e.name, "' (entries ", index_.at(e.name), " and ", i,
               "): refused as ambiguous");
      CM_CHECK(e.uncompressed_size <= kMaxEntryBytes, "zip: '", path, "': entry '", e.name,
               "' declares ", e.uncompressed_size, " uncompressed bytes, over the limit of ",
               kMaxEntryBytes);
      entries_.push_back(std::move(e));
      pos += kCentralHeaderSize + name_len + extra_len + comment_len;
    }
    CM_CHECK(pos == cd_size, "zip: '", path, "' is corrupt: the central directory holds ",
             cd_size - pos, " bytes after its ", total_entries, " entries");
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

ZipReader::~ZipReader() {
  if (fd_ >= 0) ::close(fd_);
}

void ZipReader::read_at(uint64_t offset, void* dst, size_t n, const std::string& what) const {
  CM_CHECK(offset <= file_size_ && n <= file_size_ - offset, "zip: '", path_, "': ", what, " (", n,
           " bytes at offset ", offset, ") lies past the end of the file (", file_size_, " bytes)");
  auto* out = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, out, n, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    CM_CHECK(got > 0, "zip: '", path_, "': reading ", what,
             " failed: ", got < 0 ? std::strerror(errno) : "unexpected end of file");
    out += got;
    offset += uint64_t(got);
    n -= size_t(got);
  }
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::vector<uint8_t> ZipReader::read(const std::string& name) const {
  const ZipEntry* e = find(name);
  CM_CHECK(e != nullptr, "zip: '", path_, "' has no entry '", name, "'");
  return read(*e);
}

uint64_t ZipReader::data_offset(const ZipEntry& e) const {
  const std::string what = "entry '" + e.name + "'";
  // Local header: only its signature, name and extra length matter (sizes come from the central
  // directory). The entry's data must end before the central directory.
  uint8_t lh[kLocalHeaderSize];
  CM_CHECK(e.local_header_offset + kLocalHeaderSize <= central_dir_offset_, "zip: '", path_,
           "': ", what, " has a local header offset (", e.local_header_offset,
           ") past the entries area");
  read_at(e.local_header_offset, lh, sizeof(lh), what + " local header");
  CM_CHECK(le32(lh) == kLocalHeaderSig, "zip: '", path_, "': ", what,
           " has a bad local header signature");
  const uint64_t name_len = le16(lh + 26), extra_len = le16(lh + 28);
  const uint64_t data_offset = e.local_header_offset + kLocalHeaderSize + name_len + extra_len;
  CM_CHECK(
      data_offset <= central_dir_offset_ && e.compressed_size <= central_dir_offset_ - data_offset,
      "zip: '", path_, "': ", what, " is truncated (", e.compressed_size,
      " bytes of data at offset ", data_offset, " run past the entries area, which ends at ",
      central_dir_offset_, ")");
  std::string local_name(name_len, '\0');
  read_at(e.local_header_offset + kLocalHeaderSize, local_name.data(), name_len,
          what + " local name");
  CM_CHECK(local_name == e.name, "zip: '", path_, "': ", what,
           " has a different name in its local header ('", local_name, "')");

  return data_offset;
}

std::vector<uint8_t> ZipReader::read(const ZipEntry& e) const {
  const std::string what = "entry '" + e.name + "'";
  CM_CHECK((e.flags & 1u) == 0, "zip: '", path_, "': ", what,
           " is encrypted, which is not supported");
  CM_CHECK(e.method == 0 || e.method == 8, "zip: '", path_, "': ", what,
           " uses compression method ", e.method,
           "; only stored (0) and deflate (8) are supported");

  const uint64_t data_offset = this->data_offset(e);
  std::vector<uint8_t> out;
  if (e.method == 0) {
    CM_CHECK(e.compressed_size == e.uncompressed_size, "zip: '", path_, "': stored ", what,
             " has different compressed (", e.compressed_size, ") and uncompressed (",
             e.uncompressed_size, ") sizes");
    out.resize(e.uncompressed_size);
    read_at(data_offset, out.data(), out.size(), what);
  } else {
    CM_CHECK(e.uncompressed_size <= e.compressed_size * kMaxDeflateRatio + 1024, "zip: '", path_,
             "': ", what, " declares ", e.uncompressed_size, " uncompressed bytes from ",
             e.compressed_size, " compressed bytes, more than deflate can produce");
    out.resize(e.uncompressed_size);
    z_stream zs{};
    CM_CHECK(inflateInit2(&zs, -MAX_WBITS) == Z_OK, "zip: '", path_, "': ", what,
             ": inflateInit2 failed");
    // Feed the compressed data in chunks so that a large entry is not held twice.
    std::vector<uint8_t> chunk(std::min<uint64_t>(e.compressed_size, uint64_t(1) << 20));
    uint64_t consumed = 0;
    int rc = Z_OK;
    uint8_t empty_out = 0;  // inflate refuses a null next_out, even for an empty entry
    zs.next_out = out.empty() ? &empty_out : out.data();
    zs.avail_out = uInt(out.size());  // < 4 GiB: ZIP64 is refused
    try {
      while (rc != Z_STREAM_END) {
        if (zs.avail_in == 0 && consumed < e.compressed_size) {
          const size_t n = size_t(std::min<uint64_t>(chunk.size(), e.compressed_size - consumed));
          read_at(data_offset + consumed, chunk.data(), n, what);
          consumed += n;
          zs.next_in = chunk.data();
          zs.avail_in = uInt(n);
        }
        const uInt in_before = zs.avail_in, out_before = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        CM_CHECK(rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR, "zip: '", path_,
                 "': ", what, " has corrupt deflate data: ", zs.msg ? zs.msg : zError(rc));
        if (rc != Z_STREAM_END && zs.avail_in == in_before && zs.avail_out == out_before) {
          // No progress: either the input ran out or the output is full before the stream end.
          CM_CHECK(zs.avail_out > 0, "zip: '", path_, "': ", what,
                   " inflates to more than its declared ", e.uncompressed_size, " bytes");
          CM_FAIL("zip: '", path_, "': ", what, " is truncated (deflate stream ends early)");
        }
      }
    } catch (...) {
      inflateEnd(&zs);
      throw;
    }
    const uint64_t produced = zs.total_out, used = consumed - zs.avail_in;
    inflateEnd(&zs);
    CM_CHECK(produced == e.uncompressed_size, "zip: '", path_, "': ", what, " inflates to ",
             produced, " bytes, but the directory says ", e.uncompressed_size);
    CM_CHECK(used == e.compressed_size, "zip: '", path_, "': ", what, " has ",
             e.compressed_size - used, " bytes after the end of its deflate stream");
  }
  const uint32_t crc = uint32_t(
      crc32_z(crc32_z(0L, Z_NULL, 0), out.empty() ? Z_NULL : out.data(), z_size_t(out.size())));
  CM_CHECK(crc == e.crc32, "zip: '", path_, "': ", what, " fails its CRC-32 check (corrupt data)");
  return out;
}

}  // namespace cm::data
