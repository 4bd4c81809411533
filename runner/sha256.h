// SHA-256 (FIPS 180-4), for the file hashes that `cm eval` records with each result (checkpoint,
// Inception or classifier weights, reference statistics), so that a number can be traced to the
// exact files that produced it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cm::runner {

// Incremental hashing: update() any number of times, then digest() once.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // The 32-byte digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();
  // The digest as 64 lowercase hexadecimal digits (what sha256sum prints).
  std::string hex_digest();

 private:
  void block(const uint8_t* p);  // compresses one 64-byte block into state_
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
  bool finished_ = false;
};

// The hex digest of a string.
std::string sha256_hex(std::string_view s);
// The hex digest of a file's contents, read in chunks; a missing or unreadable file is a cm::Error
// naming it.
std::string sha256_file(const std::string& path);

}  // namespace cm::runner
