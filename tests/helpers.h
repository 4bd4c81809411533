// Shared test utilities: random inputs in several memory layouts, a gradcheck assertion, and
// host-side reference helpers. Every test compares against an independent oracle; these helpers
// only make the inputs.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"

namespace cm::test {

// The device of the device-generic suites (the autograd engine's, tests/test_autograd.cpp and
// tests/test_inplace.cpp, and every input made by randn_input): the CPU, or the device named by the
// environment variable CM_TEST_DEVICE (e.g. cuda), so that the same suites also run on the GPU
// (tools/gpu_device_run.sh). tests/main.cpp skips a run asking for a GPU where there is none.
inline Device test_device() {
  static const Device d = [] {
    const char* e = std::getenv("CM_TEST_DEVICE");
    return e && *e ? Device::parse(e) : Device::cpu();
  }();
  return d;
}

// t on the test device; a leaf that requires grad stays a leaf that requires grad.
inline Tensor on_test_device(const Tensor& t) {
  if (t.device() == test_device()) return t;
  Tensor moved = to(detach(t), test_device());
  if (t.requires_grad()) moved.set_requires_grad(true);
  return moved;
}

// How a test input is laid out in memory. Values are the same whatever the layout.
enum class Layout {
  Contiguous,
  Transposed,    // a permuted view of a contiguous tensor (for rank >= 2; rank 1 uses Strided)
  Strided,       // every other element of a twice-as-long last dim
  ChannelsLast,  // rank 4 [N, C, H, W] stored as [N, H, W, C] (not in kLayouts: the conv suites)
};
inline const char* layout_name(Layout l) {
  return l == Layout::Contiguous     ? "contiguous"
         : l == Layout::Transposed   ? "transposed"
         : l == Layout::ChannelsLast ? "channels-last"
                                     : "strided";
}
inline const std::vector<Layout> kLayouts = {Layout::Contiguous, Layout::Transposed,
                                             Layout::Strided};

// Copies the values of `src` (any layout) into a fresh tensor with the requested layout.
inline Tensor with_layout(const Tensor& src, Layout layout) {
  NoGradGuard ng;
  const Shape s = src.shape();
  const int64_t nd = int64_t(s.size());
  if (layout == Layout::Transposed && nd >= 2) {
    Shape rev(s.rbegin(), s.rend());
    Shape perm(static_cast<size_t>(nd));
    for (int64_t i = 0; i < nd; ++i) perm[size_t(i)] = nd - 1 - i;
    Tensor base = empty(rev, {.dtype = src.dtype(), .device = src.device()});
    Tensor view = permute(base, perm);  // shape s, reversed strides
    copy_(view, src);
    return detach(view);
  }
  if (layout == Layout::ChannelsLast && nd == 4) {
    Tensor base = empty({s[0], s[2], s[3], s[1]}, {.dtype = src.dtype(), .device = src.device()});
    Tensor view = permute(base, {0, 3, 1, 2});  // shape s, channels-last strides
    copy_(view, src);
    return detach(view);
  }
  if (layout != Layout::Contiguous && nd >= 1) {
    Shape wide = s;
    wide.back() *= 2;
    Tensor base = zeros(wide, {.dtype = src.dtype(), .device = src.device()});
    Tensor view = slice(base, -1, 0, wide.back(), 2);
    copy_(view, src);
    return detach(view);
  }
  return clone(detach(src));
}

// Random normal values (deterministic by seed), scaled, in the given layout and dtype.
inline Tensor randn_input(const Shape& s, uint64_t seed, Layout layout = Layout::Contiguous,
                          DType dtype = DType::f64, double scale = 1.0, double shift = 0.0) {
  Generator g(seed);
  Tensor t = randn(s, {.dtype = DType::f64}, &g);
  t = add(mul(t, scale), shift);
  return with_layout(on_test_device(to(t, dtype)), layout);
}

// A leaf requiring grad (f64), in the given layout.
inline Tensor grad_input(const Shape& s, uint64_t seed, Layout layout = Layout::Contiguous,
                         double scale = 1.0, double shift = 0.0) {
  Tensor t = randn_input(s, seed, layout, DType::f64, scale, shift);
  t.set_requires_grad(true);
  return t;
}

inline std::vector<double> values(const Tensor& t) {
  return t.to_vector<double>();
}

// The message of what f throws ("" when it throws nothing): for checks that an error names a
// file, a field or a value.
inline std::string error_message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Checks that f throws cm::Error whose message contains every piece.
inline void check_error(const std::function<void()>& f, const std::vector<std::string>& pieces) {
  try {
    f();
    FAIL_CHECK("no error (expected one mentioning '" << pieces[0] << "')");
  } catch (const cm::Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : pieces)
      CHECK_MESSAGE(msg.find(p) != std::string::npos, "'", p, "' not in: ", msg);
  }
}

}  // namespace cm::test

// CHECK_GRADCHECK(f, inputs[, options]): f maps a std::vector<Tensor> to a Tensor.
#define CHECK_GRADCHECK(f, ...)                \
  do {                                         \
    auto _r = ::cm::gradcheck(f, __VA_ARGS__); \
    CHECK_MESSAGE(_r.ok, _r.message);          \
  } while (0)
