#include <doctest/doctest.h>

#include "autograd/ops.h"

TEST_SUITE("tensor") {
  TEST_CASE("smoke") {
    cm::Tensor a = cm::arange(6, {.dtype = cm::DType::f32}).reshape({2, 3});
    cm::Tensor b = a * 2.0 + 1.0;
    CHECK(b.to_vector<float>() == std::vector<float>{1, 3, 5, 7, 9, 11});
  }
}
