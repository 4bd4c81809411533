// gradcheck: compares the Jacobian that backward computes with central finite differences, in
// f64, for every input that requires grad. Inputs may be non-contiguous views; they are perturbed
// element by element in place (under no-grad) and restored.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace cm {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-5;  // |analytic − numeric| ≤ atol + rtol·|numeric|
  double rtol = 1e-3;
};

struct GradcheckResult {
  bool ok = true;
  double max_error = 0;  // the largest |analytic − numeric|
  std::string message;   // the worst mismatch, for the test log
};

using GradcheckFn = std::function<Tensor(const std::vector<Tensor>&)>;

GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor>& inputs,
                          GradcheckOptions opt = {});

}  // namespace cm
