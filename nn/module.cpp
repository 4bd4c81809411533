#include "nn/module.h"

#include "nn/flat.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>

namespace cm::nn {

void Module::check_name(const std::string& name) const {
  CM_CHECK(!name.empty() && name.find('.') == std::string::npos, "Module: invalid name \"", name,
           "\" (names are non-empty and have no dots)");
  auto taken = [&](const auto& list) {
    return std::any_of(list.begin(), list.end(), [&](const auto& e) { return e.first == name; });
  };
  CM_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_), "Module: name \"", name,
           "\" registered twice");
}

Tensor& Module::register_parameter(const std::string& name, Tensor& member) {
  check_name(name);
  CM_CHECK(member.defined(), "register_parameter: \"", name, "\" is undefined");
  if (!member.requires_grad()) member.set_requires_grad(true);
  params_.emplace_back(name, &member);
  return member;
}

Tensor& Module::register_buffer(const std::string& name, Tensor& member) {
  check_name(name);
  CM_CHECK(member.defined(), "register_buffer: \"", name, "\" is undefined");
  buffers_.emplace_back(name, &member);
  return member;
}

void Module::for_each_tensor(const std::function<void(const std::string&, Tensor&, bool)>& f,
                             const std::string& prefix) const {
  for (const auto& [n, t] : params_) f(prefix + n, *t, true);
  for (const auto& [n, t] : buffers_) f(prefix + n, *t, false);
  for (const auto& [n, c] : children_) c->for_each_tensor(f, prefix + n + ".");
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for_each_tensor([&](const std::string& n, Tensor& t, bool p) {
    if (p) out.emplace_back(n, t);
  });
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for_each_tensor([&](const std::string& n, Tensor& t, bool p) {
    if (!p) out.emplace_back(n, t);
  });
  return out;
}

std::vector<std::pair<std::string, const Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, const Module*>> out{{"", this}};
  for (const auto& [n, c] : children_)
    for (auto& [cn, cm] : c->named_modules()) out.emplace_back(cn.empty() ? n : n + "." + cn, cm);
  return out;
}

int64_t Module::num_parameters(bool include_buffers) const {
  int64_t n = 0;
  for_each_tensor([&](const std::string&, Tensor& t, bool p) {
    if (p || include_buffers) n += t.numel();
  });
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

namespace {
// Replaces a tensor by a converted copy; parameters stay leaves requiring grad.
void convert(Tensor& t, bool is_param, const std::function<Tensor(const Tensor&)>& f) {
  NoGradGuard ng;
  Tensor c = f(detach(t));
  if (c.same(t) || c.storage() == t.storage()) c = clone(c);
  c = detach(c);
  if (is_param) c.set_requires_grad(true);
  t = c;
}
}  // namespace

void Module::to(Device device) {
  bool moved = false;
  for_each_tensor([&](const std::string&, Tensor& t, bool p) {
    if (t.device() != device) {
      convert(t, p, [&](const Tensor& x) { return cm::to(x, device); });
      moved = moved || p;
    }
  });
  if (flat_ && moved) flatten_parameters(flat_->grads().size() > 0);
}

void Module::to(DType dtype) {
  bool moved = false;
  for_each_tensor([&](const std::string&, Tensor& t, bool p) {
    if (t.dtype() != dtype && is_floating(t.dtype())) {
      convert(t, p, [&](const Tensor& x) { return cm::to(x, dtype); });
      moved = moved || p;
    }
  });
  if (flat_ && moved) flatten_parameters(flat_->grads().size() > 0);
}

void Module::flatten_parameters(bool grads) {
  std::vector<Tensor*> members;
  std::vector<Tensor> params;
  for_each_tensor([&](const std::string&, Tensor& t, bool p) {
    if (!p) return;
    members.push_back(&t);
    params.push_back(t);
  });
  flat_ = FlatParameters::create(params, grads);
  for (size_t i = 0; i < members.size(); ++i) *members[i] = flat_->params().view(i);
}

std::shared_ptr<const FlatParameters> Module::flat_parameters() const {
  return flat_ && flat_->params().holds(parameters()) ? flat_ : nullptr;
}

Device Module::device() const {
  Device d = Device::cpu();
  bool first = true;
  for_each_tensor([&](const std::string& n, Tensor& t, bool) {
    if (first) d = t.device();
    first = false;
    CM_CHECK(t.device() == d, "Module::device: \"", n, "\" is on ", t.device().str(),
             ", others on ", d.str());
  });
  return d;
}

void Module::zero_grad() {
  for_each_tensor([](const std::string&, Tensor& t, bool p) {
    if (p) t.zero_grad();
  });
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for_each_tensor([&](const std::string& n, Tensor& t, bool) { out.emplace(n, t); });
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  std::vector<std::string> missing, mismatched;
  std::set<std::string> seen;
  NoGradGuard ng;
  for_each_tensor([&](const std::string& n, Tensor& t, bool) {
    auto it = state.find(n);
    if (it == state.end()) {
      missing.push_back(n);
      return;
    }
    seen.insert(n);
    if (it->second.shape() != t.shape()) {
      mismatched.push_back(n + " (checkpoint " + shape_str(it->second.shape()) + ", model " +
                           shape_str(t.shape()) + ")");
      return;
    }
  });
  std::vector<std::string> unexpected;
  for (const auto& [n, t] : state)
    if (!seen.count(n)) unexpected.push_back(n);
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 20; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 20) s += ", ... (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string err;
  if (!mismatched.empty()) err += "\n  mis-shaped: " + list(mismatched);
  if (strict && !missing.empty()) err += "\n  missing: " + list(missing);
  if (strict && !unexpected.empty()) err += "\n  unexpected: " + list(unexpected);
  CM_CHECK(err.empty(), "load_state_dict: the state does not match the module:", err);
  for_each_tensor([&](const std::string& n, Tensor& t, bool) {
    auto it = state.find(n);
    if (it != state.end()) copy_(t, cm::to(it->second, t.device()));
  });
}

void Module::copy_from(const Module& other) {
  load_state_dict(other.state_dict(), true);
}

std::string summary(const Module& m, int max_depth) {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "%-44s %-22s %14s\n", "module", "type", "parameters");
  os << line;
  for (const auto& [name, mod] : m.named_modules()) {
    const int depth = name.empty() ? 0 : int(std::count(name.begin(), name.end(), '.')) + 1;
    if (depth > max_depth) continue;
    const std::string shown =
        name.empty() ? "(total)" : std::string(size_t(2 * (depth - 1)), ' ') + name;
    std::snprintf(line, sizeof line, "%-44s %-22s %14lld\n", shown.c_str(),
                  mod->type_name().c_str(), (long long)mod->num_parameters());
    os << line;
  }
  return os.str();
}

}  // namespace cm::nn
