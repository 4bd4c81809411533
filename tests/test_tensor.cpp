// Tensors (tensor/tensor.h, views in autograd/ops/view.cpp): creation, views sharing storage and
// version counter, reshape/view, permute, narrow/slice/select, expand, squeeze/unsqueeze,
// flatten/unflatten, contiguous/clone/detach, host access and printing, alias bounds, contiguity,
// devices, and gradchecks of every view op.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"

using namespace cm;
using namespace cm::test;

namespace {

// 0, 1, ..., n-1 as f64 in the given shape (contiguous).
Tensor iota(const Shape& s) {
  return arange(0.0, double(shape_numel(s)), 1.0, {.dtype = DType::f64}).reshape(s);
}

bool shares_storage(const Tensor& a, const Tensor& b) {
  return a.storage().get() == b.storage().get();
}

[[maybe_unused]] std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_SUITE("tensor") {
  TEST_CASE("zeros, ones, full, empty") {
    Tensor z = zeros({2, 3});
    CHECK(z.shape() == Shape{2, 3});
    CHECK(z.strides() == Shape{3, 1});
    CHECK(z.dtype() == DType::f32);
    CHECK(z.device() == Device::cpu());
    CHECK(z.numel() == 6);
    CHECK(z.dim() == 2);
    CHECK(z.nbytes() == 24);
    CHECK(z.to_vector<float>() == std::vector<float>(6, 0.0f));
    CHECK(!z.requires_grad());
    CHECK(ones({4}, {.dtype = DType::i64}).to_vector<int64_t>() == std::vector<int64_t>(4, 1));
    CHECK(full({3}, -2.5, {.dtype = DType::f64}).to_vector<double>() ==
          std::vector<double>(3, -2.5));
    CHECK(full({2}, 7.9, {.dtype = DType::i32}).to_vector<int32_t>() == std::vector<int32_t>(2, 7));
    CHECK(full({2}, 3.0, {.dtype = DType::b8}).to_vector<bool>() == std::vector<bool>(2, true));
    CHECK(full({2}, 0.1, {.dtype = DType::f16}).to_vector<Half>()[1].bits == Half(0.1f).bits);
    Tensor e = empty({0, 5});
    CHECK(e.numel() == 0);
    CHECK(e.to_vector<float>().empty());
    CHECK(zeros({}).numel() == 1);
    CHECK(ones({2}, {.requires_grad = true}).requires_grad());
    CHECK_THROWS_AS(zeros({-1, 2}), Error);
    CHECK_THROWS_AS(zeros({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}), Error);  // more than kMaxDims
    CHECK_THROWS_AS(ones({2}, {.dtype = DType::i32, .requires_grad = true}), Error);
  }

  TEST_CASE("shapes whose counts, strides or bytes overflow 64 bits are refused, naming them") {
    // found by fuzzing the npy and safetensors readers: a zero-size shape passes a byte count
    // check, but its strides (zero dims count as 1) overflowed (UBSan: signed overflow)
    const int64_t big = int64_t(1) << 62;
    CHECK_THROWS_WITH_AS(empty({0, big, big}), doctest::Contains("strides overflow"), Error);
    CHECK_THROWS_WITH_AS(empty({big}, {.dtype = DType::f64}),
                         doctest::Contains("its size in bytes overflows"), Error);
    CHECK_THROWS_WITH_AS(shape_numel({big, 8}), doctest::Contains("[4611686018427387904, 8]"),
                         Error);
    CHECK(empty({0, int64_t(1) << 30, int64_t(1) << 30}).numel() == 0);  // large but representable
    CHECK(shape_numel({0, big, big}) == 0);
  }

  TEST_CASE(
      "memory formats: channels-last strides, outputs that follow their inputs, exact values") {
    const Tensor e = empty({2, 3, 4, 5}, {}, MemoryFormat::ChannelsLast);
    CHECK(e.strides() == Shape{60, 1, 15, 3});
    CHECK(e.strides() == channels_last_strides(e.shape()));
    CHECK(is_channels_last(e));
    CHECK(memory_format_of(e) == MemoryFormat::ChannelsLast);
    CHECK(memory_format_of(empty({2, 3, 4, 5})) == MemoryFormat::Contiguous);
    // C = 1 (or H = W = 1): both at once, counted as contiguous
    CHECK(is_channels_last(empty({2, 1, 4, 5})));
    CHECK(memory_format_of(empty({2, 1, 4, 5}, {}, MemoryFormat::ChannelsLast)) ==
          MemoryFormat::Contiguous);
    CHECK_THROWS_WITH_AS(empty({2, 3, 4}, {}, MemoryFormat::ChannelsLast), doctest::Contains("4-D"),
                         Error);
    CHECK_THROWS_WITH_AS(to_memory_format(randn({3, 4}), MemoryFormat::ChannelsLast),
                         doctest::Contains("4-D"), Error);

    const Tensor a = randn_input({2, 6, 3, 5}, 1), b = randn_input({2, 6, 3, 5}, 2);
    const Tensor bias = randn_input({1, 6, 1, 1}, 3), row = randn_input({5}, 4);
    const Tensor acl = to_memory_format(a, MemoryFormat::ChannelsLast),
                 bcl = to_memory_format(b, MemoryFormat::ChannelsLast);
    CHECK(values(acl) == values(a));
    CHECK(to_memory_format(acl, MemoryFormat::ChannelsLast).same(acl));
    // unary, binary (same format, mixed formats, broadcast operands), where: channels-last out,
    // the same values as on contiguous operands
    const auto same = [](const Tensor& cl, const Tensor& ref, const char* what) {
      CHECK_MESSAGE(memory_format_of(cl) == MemoryFormat::ChannelsLast, what);
      CHECK_MESSAGE(values(cl) == values(ref), what);
    };
    same(silu(acl), silu(a), "silu");
    same(add(acl, bcl), add(a, b), "add");
    same(mul(acl, b), mul(a, b), "mul, mixed formats");
    same(add(a, bcl), add(a, b), "add, channels-last second operand");
    same(add(acl, bias), add(a, bias), "add, per-channel broadcast");
    same(mul(acl, row), mul(a, row), "mul, broadcast last dim");
    same(where(gt(acl, 0.0), acl, bcl), where(gt(a, 0.0), a, b), "where");
    same(to(acl, DType::f32), to(a, DType::f32), "to(f32)");
    same(cat({acl, bcl}, 1), cat({a, b}, 1), "cat along channels");
    CHECK(memory_format_of(add(a, bias)) == MemoryFormat::Contiguous);
    // a channel slice of a channels-last tensor (not dense, channels-last stride order) gives
    // channels-last outputs; a slice of a contiguous one, contiguous outputs
    const Tensor wide = cat({acl, bcl}, 1), wide_c = cat({a, b}, 1);
    const Tensor slice = narrow(wide, 1, 6, 6), slice_c = narrow(wide_c, 1, 6, 6);
    REQUIRE_FALSE(is_channels_last(slice));
    same(mul(slice, 2.0), mul(b, 2.0), "mul_scalar of a channel slice");
    same(add(slice, slice), add(b, b), "add of two channel slices");
    CHECK(memory_format_of(mul(slice_c, 2.0)) == MemoryFormat::Contiguous);
    // one channel of it: both stride orders at once, counted as contiguous
    CHECK(memory_format_of(mul(narrow(acl, 1, 0, 1), 2.0)) == MemoryFormat::Contiguous);
    // gradients through to_memory_format and channels-last elementwise ops
    CHECK_GRADCHECK(
        [](const std::vector<Tensor>& v) {
          return mul(silu(to_memory_format(v[0], MemoryFormat::ChannelsLast)), v[1]);
        },
        {grad_input({2, 3, 2, 4}, 5), grad_input({1, 3, 1, 1}, 6)});
  }

  TEST_CASE("arange") {
    CHECK(arange(5).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
    CHECK(arange(5).dtype() == DType::i64);
    CHECK(arange(0).numel() == 0);
    CHECK(arange(2.0, 11.0, 3.0).to_vector<int64_t>() == std::vector<int64_t>{2, 5, 8});
    SUBCASE("fractional steps") {
      const std::vector<double> v =
          arange(0.0, 1.0, 0.1, {.dtype = DType::f64}).to_vector<double>();
      REQUIRE(v.size() == 10);
      for (size_t i = 0; i < v.size(); ++i) CHECK(v[i] == double(i) * 0.1);
      CHECK(arange(1.0, 2.5, 0.5, {.dtype = DType::f32}).to_vector<float>() ==
            std::vector<float>{1.0f, 1.5f, 2.0f});
      CHECK(arange(1.0, 2.51, 0.5, {.dtype = DType::f32}).numel() == 4);
    }
    SUBCASE("negative step") {
      CHECK(arange(5.0, 0.0, -1.5, {.dtype = DType::f64}).to_vector<double>() ==
            std::vector<double>{5, 3.5, 2, 0.5});
      CHECK(arange(3.0, 0.0, -1.0).to_vector<int64_t>() == std::vector<int64_t>{3, 2, 1});
    }
    SUBCASE("empty and invalid ranges") {
      CHECK(arange(0.0, -3.0, 1.0).numel() == 0);
      CHECK(arange(0.0, 3.0, -1.0).numel() == 0);
      CHECK_THROWS_WITH_AS(arange(0.0, 3.0, 0.0), doctest::Contains("arange"), Error);
      CHECK_THROWS_AS(arange(0.0, INFINITY, 1.0), Error);
    }
  }

  TEST_CASE("linspace, eye") {
    SUBCASE("endpoints are exact") {
      const std::vector<double> v =
          linspace(0.1, 0.7, 7, {.dtype = DType::f64}).to_vector<double>();
      REQUIRE(v.size() == 7);
      CHECK(v.front() == 0.1);
      CHECK(v.back() == 0.7);
      for (size_t i = 0; i < v.size(); ++i)
        CHECK(std::fabs(v[i] - (0.1 + 0.1 * double(i))) < 1e-15);
      const std::vector<double> w =
          linspace(-3.3, 1e3 / 7, 11, {.dtype = DType::f64}).to_vector<double>();
      CHECK(w.front() == -3.3);
      CHECK(w.back() == 1e3 / 7);
      for (size_t i = 1; i < w.size(); ++i) CHECK(w[i] > w[i - 1]);
    }
    CHECK(linspace(-1, 1, 5).to_vector<float>() == std::vector<float>{-1, -0.5f, 0, 0.5f, 1});
    CHECK(linspace(2, 0, 3).to_vector<float>() == std::vector<float>{2, 1, 0});
    CHECK(linspace(4, 9, 1).to_vector<float>() == std::vector<float>{4});
    CHECK(linspace(4, 9, 0).numel() == 0);
    CHECK_THROWS_WITH_AS(linspace(0, 1, -1), doctest::Contains("linspace"), Error);

    CHECK(eye(3).to_vector<float>() == std::vector<float>{1, 0, 0, 0, 1, 0, 0, 0, 1});
    CHECK(eye(2, {.dtype = DType::i64}).to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0, 1});
    CHECK(eye(0).shape() == Shape{0, 0});
    CHECK(eye(2, {.requires_grad = true}).requires_grad());
    CHECK_THROWS_AS(eye(-1), Error);
  }

  TEST_CASE("from_vector, scalar_tensor and the like-forms") {
    Tensor a = from_vector(std::vector<double>{1.7, -2.2, 3.5, 0.0}, {2, 2});
    CHECK(a.dtype() == DType::f64);
    CHECK(a.shape() == Shape{2, 2});
    CHECK(a.to_vector<double>() == std::vector<double>{1.7, -2.2, 3.5, 0.0});
    CHECK(from_vector(std::vector<double>{1.7, -2.2}, {2}, {.dtype = DType::i32})
              .to_vector<int32_t>() == std::vector<int32_t>{1, -2});
    Tensor f = from_vector(std::vector<double>{0.1, 1e40}, {2}, {.dtype = DType::f32});
    CHECK(f.dtype() == DType::f32);
    CHECK(f.to_vector<float>()[0] == 0.1f);
    CHECK(std::isinf(f.to_vector<float>()[1]));
    CHECK(from_vector(std::vector<int64_t>{3, 0}, {2}, {.dtype = DType::b8}).to_vector<bool>() ==
          std::vector<bool>{true, false});
    CHECK(from_vector(std::vector<bool>{true, false, true}, {3}, {.dtype = DType::f32})
              .to_vector<float>() == std::vector<float>{1, 0, 1});
    CHECK(from_vector(std::vector<float>{1, 2}, {2}, {.dtype = DType::f32, .requires_grad = true})
              .requires_grad());
    CHECK_THROWS_WITH_AS(from_vector(std::vector<float>{1, 2, 3}, {2, 2}),
                         doctest::Contains("from_vector"), Error);

    Tensor s = scalar_tensor(3.5);
    CHECK(s.dim() == 0);
    CHECK(s.shape().empty());
    CHECK(s.numel() == 1);
    CHECK(s.item<float>() == 3.5f);
    CHECK(scalar_tensor(-2, {.dtype = DType::i64}).item<int64_t>() == -2);

    Tensor base = iota({2, 3}).to(DType::f32);
    for (Tensor t : {zeros_like(base), ones_like(base), full_like(base, 4.0), empty_like(base)}) {
      CHECK(t.shape() == base.shape());
      CHECK(t.dtype() == DType::f32);
      CHECK(!shares_storage(t, base));
    }
    CHECK(zeros_like(base).to_vector<double>() == std::vector<double>(6, 0.0));
    CHECK(ones_like(base).to_vector<double>() == std::vector<double>(6, 1.0));
    CHECK(full_like(base, 4.0).to_vector<double>() == std::vector<double>(6, 4.0));
    CHECK(base.to_vector<double>() == std::vector<double>{0, 1, 2, 3, 4, 5});
    // like-forms of a non-contiguous tensor are contiguous
    CHECK(zeros_like(base.transpose(0, 1)).is_contiguous());
  }

  TEST_CASE("views share storage and the version counter") {
    Tensor base = iota({4, 3});
    Tensor row = base.select(0, 1);
    Tensor col = base.select(1, 2);
    CHECK(shares_storage(base, row));
    CHECK(shares_storage(base, col));

    SUBCASE("writes through a view are visible in the base") {
      fill_(col, -1.0);
      CHECK(base.to_vector<double>() ==
            std::vector<double>{0, 1, -1, 3, 4, -1, 6, 7, -1, 9, 10, -1});
      CHECK(row.to_vector<double>() == std::vector<double>{3, 4, -1});
    }
    SUBCASE("writes to the base are visible in the views") {
      Tensor src = from_vector(std::vector<double>{10, 11, 12}, {3});
      Tensor r2 = base.select(0, 2);
      copy_(r2, src);
      CHECK(base.narrow(0, 2, 1).to_vector<double>() == std::vector<double>{10, 11, 12});
      add_(base, 100.0);
      CHECK(row.to_vector<double>() == std::vector<double>{103, 104, 105});
      CHECK(col.to_vector<double>() == std::vector<double>{102, 105, 112, 111});
    }
    SUBCASE("version counter is shared and bumped by in-place ops") {
      const uint64_t v0 = base.version();
      CHECK(row.version() == v0);
      add_(row, 1.0);
      CHECK(base.version() == v0 + 1);
      CHECK(col.version() == v0 + 1);
      mul_(base, 2.0);
      CHECK(row.version() == v0 + 2);
      Tensor d = base.detach();
      zero_(d);
      CHECK(base.version() == v0 + 3);
      CHECK(base.to_vector<double>() == std::vector<double>(12, 0.0));
      // a copy has its own counter
      Tensor c = base.clone();
      add_(c, 1.0);
      CHECK(base.version() == v0 + 3);
    }
  }

  TEST_CASE("reshape and view") {
    Tensor base = iota({2, 3, 4});
    SUBCASE("a contiguous tensor reshapes to a view") {
      Tensor r = base.reshape({6, 4});
      CHECK(r.shape() == Shape{6, 4});
      CHECK(shares_storage(r, base));
      CHECK(r.to_vector<double>() == base.to_vector<double>());
      Tensor v = base.view({4, -1});
      CHECK(v.shape() == Shape{4, 6});
      CHECK(shares_storage(v, base));
      fill_(v, 1.0);
      CHECK(base.to_vector<double>() == std::vector<double>(24, 1.0));
    }
    SUBCASE("-1 inference") {
      CHECK(base.reshape({-1}).shape() == Shape{24});
      CHECK(base.reshape({3, -1, 2}).shape() == Shape{3, 4, 2});
      CHECK(base.reshape({-1, 1, 6}).shape() == Shape{4, 1, 6});
      CHECK(zeros({0, 3}).reshape({-1, 3}).shape() == Shape{0, 3});
    }
    SUBCASE("a non-contiguous tensor reshapes to a view when its strides allow") {
      // every other row of [4, 3]: strides [6, 1]
      Tensor rows = slice(iota({4, 3}), 0, 0, 4, 2);
      CHECK(!rows.is_contiguous());
      Tensor r = rows.reshape({2, 1, 3});
      CHECK(shares_storage(r, rows));
      CHECK(r.to_vector<double>() == std::vector<double>{0, 1, 2, 6, 7, 8});
      Tensor p = base.permute(
          {1, 0, 2});  // [3, 2, 4]; merging the last two dims is impossible, the first two too
      Tensor q = p.reshape({3, 2, 2, 2});  // splitting a dim always works
      CHECK(shares_storage(q, base));
      CHECK(q.to_vector<double>() == p.to_vector<double>());
    }
    SUBCASE("and copies otherwise") {
      Tensor t = base.transpose(1, 2);  // [2, 4, 3]
      Tensor r = t.reshape({2, 12});
      CHECK(!shares_storage(r, base));
      CHECK(r.is_contiguous());
      std::vector<double> want;
      for (int a = 0; a < 2; ++a)
        for (int c = 0; c < 4; ++c)
          for (int b = 0; b < 3; ++b) want.push_back(a * 12 + b * 4 + c);
      CHECK(r.to_vector<double>() == want);
      Tensor rows = slice(iota({4, 3}), 0, 0, 4, 2);
      Tensor flat = rows.reshape({6});
      CHECK(!shares_storage(flat, rows));
      CHECK(flat.to_vector<double>() == std::vector<double>{0, 1, 2, 6, 7, 8});
    }
    SUBCASE("view fails on incompatible strides") {
      Tensor t = base.transpose(1, 2);
      CHECK_THROWS_WITH_AS(t.view({24}), doctest::Contains("view"), Error);
      CHECK_THROWS_AS(t.view({2, 12}), Error);
      CHECK(t.view({2, 2, 2, 3}).shape() == Shape{2, 2, 2, 3});  // splitting a dim is a view
      Tensor rows = slice(iota({4, 3}), 0, 0, 4, 2);
      CHECK_THROWS_AS(rows.view({6}), Error);
    }
    SUBCASE("errors") {
      CHECK_THROWS_WITH_AS(base.reshape({5, 5}), doctest::Contains("reshape"), Error);
      CHECK_THROWS_AS(base.reshape({-1, -1}), Error);
      CHECK_THROWS_AS(base.reshape({-1, 5}), Error);
      CHECK_THROWS_AS(base.reshape({-2, 12}), Error);
      CHECK_THROWS_AS(base.reshape({0, -1}), Error);
    }
  }

  TEST_CASE("permute and transpose") {
    Tensor base = iota({2, 3, 4});
    Tensor p = base.permute({2, 0, 1});
    CHECK(p.shape() == Shape{4, 2, 3});
    CHECK(shares_storage(p, base));
    CHECK(!p.is_contiguous());
    std::vector<double> want;
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 2; ++b)
        for (int c = 0; c < 3; ++c) want.push_back(b * 12 + c * 4 + a);
    CHECK(p.to_vector<double>() == want);
    CHECK(base.permute({-1, 0, 1}).to_vector<double>() == want);

    Tensor t = base.transpose(0, -1);
    CHECK(t.shape() == Shape{4, 3, 2});
    want.clear();
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 3; ++b)
        for (int c = 0; c < 2; ++c) want.push_back(c * 12 + b * 4 + a);
    CHECK(t.to_vector<double>() == want);
    CHECK(base.transpose(1, 1).to_vector<double>() == base.to_vector<double>());
    CHECK(scalar_tensor(2.0).transpose(0, 0).item<float>() == 2.0f);

    CHECK_THROWS_WITH_AS(base.permute({0, 1}), doctest::Contains("permute"), Error);
    CHECK_THROWS_AS(base.permute({0, 1, 1}), Error);
    CHECK_THROWS_AS(base.permute({0, 1, 3}), Error);
    CHECK_THROWS_AS(base.transpose(0, 3), Error);
  }

  TEST_CASE("narrow, slice and select") {
    Tensor base = iota({2, 3, 4});
    auto at = [](int a, int b, int c) { return double(a * 12 + b * 4 + c); };

    Tensor n = base.narrow(1, 1, 2);
    CHECK(n.shape() == Shape{2, 2, 4});
    CHECK(shares_storage(n, base));
    std::vector<double> want;
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b)
        for (int c = 0; c < 4; ++c) want.push_back(at(a, b + 1, c));
    CHECK(n.to_vector<double>() == want);
    CHECK(base.narrow(-1, -2, 2).to_vector<double>() == slice(base, 2, 2, 4).to_vector<double>());
    CHECK(base.narrow(0, 2, 0).numel() == 0);
    CHECK_THROWS_WITH_AS(base.narrow(1, 2, 2), doctest::Contains("narrow"), Error);
    CHECK_THROWS_AS(base.narrow(1, 0, -1), Error);

    SUBCASE("slice with steps") {
      Tensor s = slice(base, 2, 1, 4, 2);
      CHECK(s.shape() == Shape{2, 3, 2});
      CHECK(s.stride(2) == 2);
      want.clear();
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 3; ++b)
          for (int c : {1, 3}) want.push_back(at(a, b, c));
      CHECK(s.to_vector<double>() == want);
      CHECK(slice(base, -1, -3, 100, 2).to_vector<double>() ==
            want);  // negative start, end clamped
      Tensor s3 = slice(base, 1, 0, 3, 3);
      CHECK(s3.shape() == Shape{2, 1, 4});
      CHECK(slice(base, 0, 1, 1).numel() == 0);
      CHECK(slice(base, 0, 2, 1).numel() == 0);  // end before start: empty
      // slices of slices
      Tensor ss = slice(slice(iota({10}), 0, 1, 10, 2), 0, 1, 5, 2);  // elements 3, 7
      CHECK(ss.to_vector<double>() == std::vector<double>{3, 7});
      CHECK_THROWS_WITH_AS(slice(base, 0, 0, 2, 0), doctest::Contains("slice"), Error);
      CHECK_THROWS_AS(slice(base, 0, 0, 2, -1), Error);
    }
    SUBCASE("select removes the dim; negative indices count from the end") {
      Tensor s = base.select(1, -1);
      CHECK(s.shape() == Shape{2, 4});
      want.clear();
      for (int a = 0; a < 2; ++a)
        for (int c = 0; c < 4; ++c) want.push_back(at(a, 2, c));
      CHECK(s.to_vector<double>() == want);
      CHECK(base.select(1, 2).to_vector<double>() == want);
      CHECK(base.select(0, 1).select(0, 0).select(0, 3).item<double>() == at(1, 0, 3));
      CHECK(base.select(-1, 0).shape() == Shape{2, 3});
      CHECK_THROWS_WITH_AS(base.select(1, 3), doctest::Contains("select"), Error);
      CHECK_THROWS_AS(base.select(1, -4), Error);
      CHECK_THROWS_AS(base.select(3, 0), Error);
    }
  }

  TEST_CASE("expand") {
    Tensor x = from_vector(std::vector<double>{1, 2, 3}, {3, 1});
    Tensor e = x.expand({2, 3, 4});
    CHECK(e.shape() == Shape{2, 3, 4});
    CHECK(e.stride(0) == 0);
    CHECK(e.stride(2) == 0);
    CHECK(e.stride(1) == 1);
    CHECK(shares_storage(e, x));
    CHECK(!e.is_contiguous());
    std::vector<double> want;
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 3; ++b)
        for (int c = 0; c < 4; ++c) want.push_back(b + 1);
    CHECK(e.to_vector<double>() == want);
    CHECK(x.expand({-1, 5}).shape() == Shape{3, 5});
    CHECK(x.expand({3, 1}).same(x) == false);  // a view, even when the shape is unchanged
    CHECK(x.expand({3, 1}).to_vector<double>() == x.to_vector<double>());
    CHECK(broadcast_to(x, {2, 3, 2}).shape() == Shape{2, 3, 2});
    // a write to the base shows in every expanded position
    Tensor x0 = x.select(0, 0);
    fill_(x0, 9.0);
    CHECK(e.select(0, 1).select(0, 0).to_vector<double>() == std::vector<double>(4, 9.0));

    // expanding a tensor with history to its own shape gives a view with its own node
    Tensor leaf = from_vector(std::vector<double>{1, 2, 3}, {3, 1}).set_requires_grad();
    Tensor same = leaf.expand({3, 1});
    CHECK(leaf.is_leaf());
    CHECK(!same.is_leaf());
    Tensor mid = leaf * 2.0;
    Tensor same2 = mid.expand({-1, 1});
    (same * 3.0 + same2).sum().backward();
    CHECK(leaf.grad().to_vector<double>() == std::vector<double>(3, 5.0));

    CHECK_THROWS_WITH_AS(x.expand({4, 4}), doctest::Contains("expand"), Error);
    CHECK_THROWS_AS(x.expand({3}), Error);
    CHECK_THROWS_AS(x.expand({-1, 3, 4}), Error);  // -1 for a new leading dim
  }

  TEST_CASE("squeeze, unsqueeze, flatten, unflatten") {
    Tensor base = iota({2, 1, 3, 1});
    CHECK(base.squeeze(1).shape() == Shape{2, 3, 1});
    CHECK(base.squeeze(-1).shape() == Shape{2, 1, 3});
    CHECK(base.squeeze(0).shape() == Shape{2, 1, 3, 1});  // not size 1: unchanged
    CHECK(squeeze(base).shape() == Shape{2, 3});
    CHECK(squeeze(base).to_vector<double>() == base.to_vector<double>());
    CHECK(shares_storage(squeeze(base), base));
    CHECK(squeeze(ones({1, 1})).dim() == 0);
    CHECK_THROWS_AS(base.squeeze(4), Error);

    Tensor v = iota({2, 3});
    CHECK(v.unsqueeze(0).shape() == Shape{1, 2, 3});
    CHECK(v.unsqueeze(1).shape() == Shape{2, 1, 3});
    CHECK(v.unsqueeze(2).shape() == Shape{2, 3, 1});
    CHECK(v.unsqueeze(-1).shape() == Shape{2, 3, 1});
    CHECK(v.unsqueeze(-3).shape() == Shape{1, 2, 3});
    CHECK(v.unsqueeze(1).is_contiguous());
    CHECK(v.transpose(0, 1).unsqueeze(1).to_vector<double>() ==
          std::vector<double>{0, 3, 1, 4, 2, 5});
    CHECK(scalar_tensor(1.0).unsqueeze(0).shape() == Shape{1});
    CHECK_THROWS_AS(v.unsqueeze(3), Error);
    CHECK_THROWS_AS(v.unsqueeze(-4), Error);

    Tensor b = iota({2, 3, 4});
    CHECK(b.flatten().shape() == Shape{24});
    CHECK(b.flatten(1).shape() == Shape{2, 12});
    CHECK(b.flatten(0, 1).shape() == Shape{6, 4});
    CHECK(b.flatten(1, 1).shape() == Shape{2, 3, 4});
    CHECK(b.flatten(0, 1).to_vector<double>() == b.to_vector<double>());
    CHECK(shares_storage(b.flatten(), b));
    CHECK(scalar_tensor(5.0).flatten().shape() == Shape{1});
    CHECK_THROWS_WITH_AS(b.flatten(2, 1), doctest::Contains("flatten"), Error);
    // flattening a transposed tensor copies in the view's order
    CHECK(b.transpose(0, 2).flatten().to_vector<double>() ==
          b.transpose(0, 2).contiguous().to_vector<double>());

    Tensor f = b.flatten(1);
    CHECK(unflatten(f, 1, {3, 4}).shape() == Shape{2, 3, 4});
    CHECK(unflatten(f, 1, {-1, 2}).shape() == Shape{2, 6, 2});
    CHECK(unflatten(f, -1, {2, 2, 3}).to_vector<double>() == b.to_vector<double>());
    CHECK_THROWS_AS(unflatten(f, 1, {5, -1}), Error);
    CHECK_THROWS_AS(unflatten(f, 1, {3, 3}), Error);
  }

  TEST_CASE("contiguous, clone, detach, to") {
    Tensor base = iota({3, 4});
    CHECK(base.contiguous().same(base));
    Tensor t = base.transpose(0, 1);
    Tensor c = t.contiguous();
    CHECK(!c.same(t));
    CHECK(c.is_contiguous());
    CHECK(!shares_storage(c, base));
    CHECK(c.to_vector<double>() == t.to_vector<double>());
    CHECK(c.shape() == Shape{4, 3});

    SUBCASE("clone has independent storage") {
      Tensor k = base.clone();
      CHECK(!shares_storage(k, base));
      fill_(k, 0.0);
      CHECK(base.to_vector<double>() == iota({3, 4}).to_vector<double>());
      Tensor kt = t.clone();
      CHECK(kt.is_contiguous());
      CHECK(kt.to_vector<double>() == t.to_vector<double>());
    }
    SUBCASE("detach aliases without history") {
      Tensor x = iota({3}).set_requires_grad();
      Tensor y = x * 2.0;
      Tensor d = y.detach();
      CHECK(y.requires_grad());
      CHECK(!d.requires_grad());
      CHECK(d.is_leaf());
      CHECK(!d.grad_fn());
      CHECK(shares_storage(d, y));
      CHECK(d.version() == y.version());
      CHECK(x.detach().to_vector<double>() == std::vector<double>{0, 1, 2});
    }
    SUBCASE("to dtype") {
      Tensor f = base.to(DType::f32);
      CHECK(f.dtype() == DType::f32);
      CHECK(!shares_storage(f, base));
      CHECK(f.to_vector<float>() == std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
      CHECK(base.to(DType::f64).same(base));
      CHECK(t.to(DType::i32).to_vector<int32_t>() ==
            std::vector<int32_t>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11});
      CHECK(base.to(Device::cpu()).same(base));
    }
  }

  TEST_CASE("item, to_vector and printing") {
    CHECK(scalar_tensor(2.75, {.dtype = DType::f64}).item<double>() == 2.75);
    CHECK(from_vector(std::vector<float>{-1.5f}, {1, 1}).item<int64_t>() == -1);
    CHECK(from_vector(std::vector<float>{0.5f}, {1}).item<bool>() == true);
    CHECK_THROWS_WITH_AS(iota({2}).item<double>(), doctest::Contains("item"), Error);
    CHECK(iota({2, 2}).transpose(0, 1).to_vector<float>() == std::vector<float>{0, 2, 1, 3});
    CHECK(iota({3}).to_vector<uint8_t>() == std::vector<uint8_t>{0, 1, 2});

    Tensor t = from_vector(std::vector<float>{1.5f, -2, 3, 4.25f, 5, 6}, {2, 3});
    const std::string s = t.str();
    CHECK(s.find("[[1.5, -2, 3], [4.25, 5, 6]]") != std::string::npos);
    CHECK(s.find("shape=[2, 3]") != std::string::npos);
    CHECK(s.find("dtype=f32") != std::string::npos);
    CHECK(s.find("device=cpu") != std::string::npos);
    std::ostringstream os;
    os << t;
    CHECK(os.str() == s);
    CHECK(t.transpose(0, 1).str().find("[[1.5, 4.25], [-2, 5], [3, 6]]") != std::string::npos);
    CHECK(arange(3).str().find("[0, 1, 2]") != std::string::npos);
    CHECK(arange(3).str().find("dtype=i64") != std::string::npos);
    CHECK(scalar_tensor(7).str().find("tensor(7,") != std::string::npos);
    CHECK(Tensor().str() == "Tensor(undefined)");
    const std::string big = arange(100).str();
    CHECK(big.find("...") != std::string::npos);
    CHECK(big.find("99") != std::string::npos);
    CHECK(big.find(" 50,") == std::string::npos);
    CHECK(big.size() < 200);
    CHECK(zeros({0}).str().find("shape=[0]") != std::string::npos);
  }

  TEST_CASE("alias_with bounds, is_contiguous") {
    Tensor t = iota({4});
    CHECK(t.alias_with({2}, {2}, 1).to_vector<double>() == std::vector<double>{1, 3});
    CHECK(t.alias_with({4}, {-1}, 3).to_vector<double>() == std::vector<double>{3, 2, 1, 0});
    CHECK(t.alias_with({0}, {1}, 10).numel() == 0);  // empty views touch nothing
    CHECK_THROWS_WITH_AS(t.alias_with({5}, {1}, 0), doctest::Contains("outside the storage"),
                         Error);
    CHECK_THROWS_AS(t.alias_with({2}, {1}, 3), Error);
    CHECK_THROWS_AS(t.alias_with({2}, {-1}, 0), Error);
    CHECK_THROWS_AS(t.alias_with({2}, {1}, -1), Error);
    CHECK_THROWS_AS(t.alias_with({2, 2}, {3, 1}, 0), Error);
    CHECK_THROWS_AS(t.alias_with({2}, {1, 1}, 0), Error);  // rank mismatch
    // narrowed views cannot reach past their storage either
    Tensor n = t.narrow(0, 2, 2);
    CHECK(n.alias_with({2}, {1}, 2).to_vector<double>() == std::vector<double>{2, 3});
    CHECK_THROWS_AS(n.alias_with({3}, {1}, 2), Error);

    Tensor m = iota({4, 3});
    CHECK(m.is_contiguous());
    CHECK(!m.transpose(0, 1).is_contiguous());
    CHECK(m.narrow(0, 1, 2).is_contiguous());
    CHECK(!m.narrow(1, 1, 2).is_contiguous());
    CHECK(m.select(0, 2).is_contiguous());
    CHECK(!m.select(1, 2).is_contiguous());
    CHECK(!slice(m, 0, 0, 4, 2).is_contiguous());
    CHECK(m.narrow(0, 1, 1).transpose(0, 1).transpose(0, 1).is_contiguous());
    CHECK(m.unsqueeze(1).is_contiguous());
    CHECK(m.narrow(1, 0, 1).transpose(0, 1).is_contiguous() == false);
    CHECK(m.narrow(1, 0, 1).squeeze(1).is_contiguous() == false);
    CHECK(iota({3, 1}).transpose(0, 1).is_contiguous());  // size-1 dims do not matter
    CHECK(!iota({3, 1}).expand({3, 2}).is_contiguous());
    CHECK(iota({1}).expand({1, 1}).is_contiguous());
    CHECK(scalar_tensor(1.0).is_contiguous());
    CHECK(zeros({0, 3}).transpose(0, 1).is_contiguous());  // no elements: contiguous (as PyTorch)
  }

  TEST_CASE("devices") {
    CHECK(Device::parse("cpu") == Device::cpu());
    CHECK(Device::parse("cuda") == Device::cuda(0));
    CHECK(Device::parse("cuda:1") == Device::cuda(1));
    CHECK(Device::parse("cuda:12").index == 12);
    CHECK(Device::parse("cuda:1").is_cuda());
    CHECK(Device::cuda(3).str() == "cuda:3");
    CHECK(Device::cpu().str() == "cpu");
    CHECK(Device::cuda(0) != Device::cuda(1));
    for (const char* bad :
         {"", "gpu", "CPU", "cuda:", "cuda:-1", "cuda:1x", "cuda1", " cpu", "cuda:+1x", "cpu:0"}) {
      CAPTURE(std::string(bad));
      CHECK_THROWS_WITH_AS(Device::parse(bad), doctest::Contains("invalid device"), Error);
    }
#if !defined(CM_WITH_CUDA)
    CHECK(!cuda::is_available());
    CHECK(cuda::device_count() == 0);
    const std::string msg = message_of([] { zeros({2}, {.device = Device::cuda()}); });
    CHECK(msg.find("no CUDA backend") != std::string::npos);
    CHECK(message_of([] {
            from_vector(std::vector<float>{1}, {1}, {.device = Device::cuda(1)});
          }).find("no CUDA backend") != std::string::npos);
    CHECK(message_of([] { iota({2}).to(Device::cuda()); }).find("no CUDA backend") !=
          std::string::npos);
#endif
  }

  TEST_CASE("gradchecks of the view ops") {
    using V = std::vector<Tensor>;
    for (Layout l : kLayouts) {
      CAPTURE(std::string(layout_name(l)));
      Tensor x = grad_input({3, 4}, 11, l);
      Tensor x3 = grad_input({2, 3, 2}, 12, l);
      CHECK_GRADCHECK([](const V& v) { return reshape(v[0], {2, 6}); }, {x});
      CHECK_GRADCHECK([](const V& v) { return reshape(v[0].transpose(0, 1), {-1}); }, {x});
      CHECK_GRADCHECK([](const V& v) { return view(v[0].contiguous(), {6, 2}); }, {x});
      CHECK_GRADCHECK([](const V& v) { return permute(v[0], {2, 0, 1}); }, {x3});
      CHECK_GRADCHECK([](const V& v) { return transpose(v[0], 0, 1); }, {x});
      CHECK_GRADCHECK([](const V& v) { return narrow(v[0], 1, 1, 2); }, {x});
      CHECK_GRADCHECK([](const V& v) { return slice(v[0], 1, 0, 4, 3); }, {x});
      CHECK_GRADCHECK([](const V& v) { return slice(v[0], 0, -2, 3, 1); }, {x});
      CHECK_GRADCHECK([](const V& v) { return select(v[0], 0, -1); }, {x});
      CHECK_GRADCHECK([](const V& v) { return select(v[0], 2, 1); }, {x3});
      CHECK_GRADCHECK([](const V& v) { return flatten(v[0], 1); }, {x3});
      CHECK_GRADCHECK([](const V& v) { return unflatten(v[0], 1, {2, 2}); }, {x});
      CHECK_GRADCHECK([](const V& v) { return contiguous(v[0]); }, {x});
      CHECK_GRADCHECK([](const V& v) { return clone(v[0]); }, {x});
      CHECK_GRADCHECK([](const V& v) { return to(v[0], DType::f64); }, {x});
      // through f32 and back: gradient 1, with a step large enough for f32 rounding
      CHECK_GRADCHECK([](const V& v) { return to(to(v[0], DType::f32), DType::f64) * 3.0; }, {x},
                      GradcheckOptions{.eps = 1e-2, .atol = 1e-4, .rtol = 1e-3});
    }
    Tensor c = grad_input({3, 1}, 13, Layout::Strided);
    CHECK_GRADCHECK([](const V& v) { return expand(v[0], {2, 3, 4}); }, {c});
    CHECK_GRADCHECK([](const V& v) { return expand(v[0], {-1, 5}) * v[0]; }, {c});
    CHECK_GRADCHECK([](const V& v) { return squeeze(v[0], 1); }, {c});
    CHECK_GRADCHECK([](const V& v) { return squeeze(v[0]); }, {c});
    CHECK_GRADCHECK([](const V& v) { return unsqueeze(v[0], 0); }, {c});
    CHECK_GRADCHECK([](const V& v) { return unsqueeze(v[0], -1); }, {c});
    // chains of views, and a view used twice
    Tensor x = grad_input({2, 3, 2}, 14, Layout::Transposed);
    CHECK_GRADCHECK(
        [](const V& v) {
          return slice(v[0].permute({1, 2, 0}).reshape({3, 4}), 1, 1, 4, 2);
        },
        {x});
    CHECK_GRADCHECK(
        [](const V& v) {
          return v[0].select(0, 0) * v[0].select(0, 1) + v[0].narrow(0, 0, 1).squeeze(0);
        },
        {x});
    // a view of an intermediate
    CHECK_GRADCHECK([](const V& v) { return (v[0] * v[0]).transpose(0, 2).flatten(); }, {x});
  }

}  // TEST_SUITE
