#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/ops.h"

namespace cm {
namespace {

// A one-element alias of element i (row-major) of t.
Tensor element(const Tensor& t, int64_t i) {
  int64_t off = t.offset();
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    off += (i % t.shape()[size_t(d)]) * t.strides()[size_t(d)];
    i /= t.shape()[size_t(d)];
  }
  return t.alias_with({}, {}, off);
}

std::vector<double> flat_output(const GradcheckFn& f, const std::vector<Tensor>& inputs) {
  NoGradGuard no_grad;
  return f(inputs).to_vector<double>();
}

}  // namespace

GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor>& inputs,
                          GradcheckOptions opt) {
  for (size_t k = 0; k < inputs.size(); ++k)
    if (inputs[k].defined() && inputs[k].requires_grad())
      CM_CHECK(inputs[k].dtype() == DType::f64, "gradcheck: input ", k, " must be f64, got ",
               dtype_name(inputs[k].dtype()));

  // Analytic Jacobian, one backward per output element (rows), with the graph retained.
  EnableGradGuard grad_mode;
  const Tensor y = f(inputs);
  const int64_t m = y.numel();
  std::vector<std::vector<std::vector<double>>> analytic(inputs.size());  // [input][out j][in i]
  for (int64_t j = 0; j < m && y.requires_grad(); ++j) {
    for (const Tensor& x : inputs)
      if (x.defined()) x.zero_grad();
    std::vector<double> seed(size_t(m), 0.0);
    seed[size_t(j)] = 1.0;
    backward({y}, {from_vector(seed, y.shape(), {.dtype = y.dtype(), .device = y.device()})}, true);
    for (size_t k = 0; k < inputs.size(); ++k) {
      const Tensor& x = inputs[k];
      if (!x.defined() || !x.requires_grad()) continue;
      const Tensor g = x.grad();
      analytic[k].push_back(g.defined() ? g.to_vector<double>()
                                        : std::vector<double>(size_t(x.numel()), 0.0));
    }
  }

  GradcheckResult res;
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    for (int64_t i = 0; i < x.numel(); ++i) {
      Tensor e = element(x, i);
      const double v = e.item<double>();
      std::vector<double> plus, minus;
      {
        NoGradGuard ng;
        backend_of(e).fill(e, v + opt.eps);
        plus = flat_output(f, inputs);
        backend_of(e).fill(e, v - opt.eps);
        minus = flat_output(f, inputs);
        backend_of(e).fill(e, v);
      }
      for (int64_t j = 0; j < m; ++j) {
        const double num = (plus[size_t(j)] - minus[size_t(j)]) / (2 * opt.eps);
        const double ana = y.requires_grad() ? analytic[k][size_t(j)][size_t(i)] : 0.0;
        const double err = std::fabs(ana - num);
        const bool bad = !(err <= opt.atol + opt.rtol * std::fabs(num));
        if (err > res.max_error || std::isnan(err)) res.max_error = err;
        if (bad && res.ok) {
          res.ok = false;
          std::ostringstream os;
          os << "gradcheck: input " << k << " element " << i << ", output element " << j
             << ": analytic " << ana << " vs numeric " << num << " (error " << err << ")";
          res.message = os.str();
        }
      }
    }
    x.zero_grad();
  }
  return res;
}

}  // namespace cm
