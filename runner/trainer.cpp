#include "runner/trainer.h"

#include <cmath>
#include <filesystem>

#include "consistency/sampling.h"
#include "datasets/png.h"
#include "eval/lpips.h"
#include "nn/safetensors.h"
#include "runner/images.h"

namespace fs = std::filesystem;

namespace cm::runner {

namespace {

// Independent Philox keys for the run's streams, derived from its seed (SplitMix64).
uint64_t stream_key(uint64_t seed, uint64_t stream) {
  uint64_t z =
      seed * 0x9E3779B97F4A7C15ull + stream * 0xD1B54A32D192ED03ull + 0x2545F4914F6CDD1Dull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
enum Stream : uint64_t { kInit = 1, kTrain = 2, kDropout = 3, kData = 4 };

std::string gen_str(const Generator& g) {
  return std::to_string(g.seed()) + "," + std::to_string(g.offset());
}
Generator gen_parse(const std::string& s, const std::string& what) {
  const size_t comma = s.find(',');
  CM_CHECK(comma != std::string::npos, "checkpoint: malformed generator state for ", what, ": \"",
           s, "\"");
  return Generator(std::stoull(s.substr(0, comma)), std::stoull(s.substr(comma + 1)));
}

bool target_needs_network(const consistency::Schedule& s) {
  switch (s.kind) {
    case consistency::ScheduleKind::Fixed:
      return s.fixed_mu > 0;
    case consistency::ScheduleKind::Exponential:
      return false;
    default:
      return true;
  }
}

std::string ema_name(const nn::Ema& e, const TrainConfig& t, size_t i) {
  if (t.ema_halflife_kimg > 0) return "halflife_kimg=" + std::to_string(t.ema_halflife_kimg);
  std::ostringstream os;
  os.precision(10);
  os << t.ema[i];
  (void)e;
  return os.str();
}

}  // namespace

Trainer::Trainer(const RunConfig& cfg, const std::optional<std::string>& checkpoint, Logger* log)
    : cfg_(cfg),
      log_(log),
      gen_(stream_key(cfg.seed, kTrain)),
      dropout_(stream_key(cfg.seed, kDropout)) {
  const Device dev = cfg.device;
  if (dev.is_cuda())
    CM_CHECK(cuda::is_available(), "/device: \"", dev.str(),
             "\" was asked for, but no CUDA device is available");

  // Data.
  data::ImageDataset ds = data::load_dataset(cfg.data.dataset);
  const nn::SongUNetConfig& net = cfg.network;
  CM_CHECK(ds.images.size(1) == net.in_channels && ds.images.size(2) == net.img_resolution &&
               ds.images.size(3) == net.img_resolution,
           "/data/dataset: \"", cfg.data.dataset, "\" has images of shape ",
           shape_str(Shape(ds.images.shape().begin() + 1, ds.images.shape().end())),
           ", but the network expects [", net.in_channels, ", ", net.img_resolution, ", ",
           net.img_resolution, "] (set network.img_resolution / in_channels / out_channels)");
  if (cfg.data.labels) {
    CM_CHECK(ds.num_classes > 0, "/data/labels: the data set \"", cfg.data.dataset,
             "\" has no labels");
    CM_CHECK(net.label_dim == ds.num_classes, "/data/labels: the data set has ", ds.num_classes,
             " classes, but network.label_dim is ", net.label_dim);
  } else {
    CM_CHECK(net.label_dim == 0, "/network/label_dim: ", net.label_dim,
             " makes a conditional network; set data.labels to true to train it on labels");
  }
  CM_CHECK(cfg.train.batch <= ds.images.size(0), "/train/batch: ", cfg.train.batch,
           " is larger than the data set (", ds.images.size(0), " images)");
  loader_ = std::make_unique<data::Loader>(std::move(ds),
                                           data::LoaderOptions{.batch_size = cfg.train.batch,
                                                               .seed = stream_key(cfg.seed, kData),
                                                               .random_flip = cfg.data.flip,
                                                               .labels = cfg.data.labels,
                                                               .device = dev});

  // Networks.
  Generator init(stream_key(cfg.seed, kInit));
  online_ = std::make_unique<nn::SongUNet>(net, init);
  online_->to(dev);
  if (cfg.mode == "cd") {
    LoadedNetwork t = load_network(cfg.cons.teacher, "ema", dev);
    CM_CHECK(t.config.mode == "edm", "/consistency/teacher: \"", cfg.cons.teacher, "\" is a ",
             t.config.mode, " run; a teacher is an EDM run (mode edm)");
    teacher_ = std::move(t.net);
    teacher_->eval();
    if (log_) log_->line("teacher: " + t.weights);
    // the student (and its target) start from the teacher's weights
    try {
      online_->load_state_dict(teacher_->state_dict(), true);
    } catch (const Error& e) {
      CM_FAIL(
          "/network: the student must have the teacher's architecture to start from its weights: ",
          e.what());
    }
  }
  if ((cfg.mode == "ct" || cfg.mode == "cd") &&
      cfg.cons.loss.distance == consistency::Distance::Lpips) {
    // The frozen LPIPS network, bound as the loss's distance (it keeps the network alive).
    std::shared_ptr<const eval::Lpips> lpips = eval::load_lpips(
        cfg.cons.lpips_weights, eval::LpipsOptions::variant(cfg.cons.lpips_variant), dev);
    cfg_.cons.loss.learned_distance = [lpips](const Tensor& a, const Tensor& b) {
      return lpips->forward(a, b);
    };
    if (log_) log_->line("lpips: " + cfg.cons.lpips_weights + " (" + cfg.cons.lpips_variant + ")");
  }
  if ((cfg.mode == "ct" || cfg.mode == "cd") && target_needs_network(cfg.cons.schedule)) {
    Generator unused(0);
    target_ = std::make_unique<nn::SongUNet>(net, unused);
    target_->to(dev);
    target_ema_ = std::make_unique<nn::Ema>(online_->parameters(), target_->parameters(),
                                            nn::EmaDecay::fixed(0));
    target_->train();
  }
  if (cfg.train.ema_halflife_kimg > 0) {
    emas_.push_back(std::make_unique<nn::Ema>(
        online_->parameters(),
        nn::EmaDecay::half_life(cfg.train.ema_halflife_kimg,
                                cfg.train.ema_rampup_ratio > 0
                                    ? std::optional<double>(cfg.train.ema_rampup_ratio)
                                    : std::nullopt)));
  } else {
    for (double r : cfg.train.ema)
      emas_.push_back(std::make_unique<nn::Ema>(online_->parameters(), nn::EmaDecay::fixed(r)));
  }
  Generator unused(0);
  scratch_ = std::make_unique<nn::SongUNet>(net, unused);
  scratch_->to(dev);

  // Optimisation.
  const nn::AdamOptions ao{.lr = cfg.train.lr,
                           .beta1 = cfg.train.beta1,
                           .beta2 = cfg.train.beta2,
                           .eps = cfg.train.eps,
                           .weight_decay = cfg.train.weight_decay};
  if (cfg.train.optimizer == "radam")
    opt_ = std::make_unique<nn::RAdam>(online_->parameters(), ao);
  else if (cfg.train.optimizer == "adamw")
    opt_ = std::make_unique<nn::AdamW>(online_->parameters(), ao);
  else
    opt_ = std::make_unique<nn::Adam>(online_->parameters(), ao);
  if (cfg.precision == DType::f16) scaler_ = std::make_unique<nn::DynamicLossScaler>();
  set_matmul_tf32(cfg.tf32);  // process-wide, as torch.backends.cuda.matmul.allow_tf32

  if (checkpoint) restore(*checkpoint);
}

Trainer::~Trainer() = default;

consistency::Denoiser Trainer::denoiser(const nn::SongUNet& net,
                                        consistency::Parameterization p) const {
  return consistency::Denoiser(net, p, consistency::NoiseLabels::EdmLog4, cfg_.noise,
                               cfg_.precision);
}

StepStats Trainer::train_step() {
  StepStats st;
  st.lr = nn::warmup_lr(cfg_.train.lr, double(step_), double(cfg_.train.warmup_steps));
  opt_->set_lr(st.lr);
  const data::Batch batch = loader_->next();
  const Tensor labels = cfg_.data.labels ? batch.labels : Tensor();
  online_->train();

  nn::ForwardContext ctx{.dropout = &dropout_};
  const bool stats_due =
      cfg_.train.layer_stats_every > 0 && (step_ + 1) % cfg_.train.layer_stats_every == 0;
  if (stats_due) {
    last_activations_ = nlohmann::json::object();
    ctx.observe = [this](const std::string& name, const Tensor& y) {
      NoGradGuard ng;
      const Tensor f = to(detach(y), DType::f32);
      last_activations_[name] = {{"mean", mean(f).item<double>()}, {"std", std(f).item<double>()}};
    };
  }

  Tensor loss;
  if (cfg_.mode == "edm") {
    loss = consistency::edm_loss(denoiser(*online_, consistency::Parameterization::Edm),
                                 batch.images, labels, cfg_.edm, gen_, ctx);
  } else {
    st.n = cfg_.cons.schedule.n(step_);
    st.mu = cfg_.cons.schedule.mu(step_);
    const std::vector<double> sigmas = consistency::karras_sigmas(st.n, cfg_.noise);
    const consistency::Denoiser f = denoiser(*online_, consistency::Parameterization::Consistency);
    const consistency::Denoiser ft =
        denoiser(target_ ? *target_ : *online_, consistency::Parameterization::Consistency);
    // the online pass observes activations; the target's pass runs on a copy of ctx without it
    if (cfg_.mode == "ct") {
      consistency::StepLoss r =
          consistency::ct_loss(f, ft, batch.images, labels, sigmas, cfg_.cons.loss, gen_, dropout_);
      loss = r.loss;
    } else {
      const consistency::Denoiser teacher = denoiser(*teacher_, consistency::Parameterization::Edm);
      consistency::StepLoss r =
          consistency::cd_loss(f, ft, teacher, batch.images, labels, sigmas, cfg_.cons.solver,
                               cfg_.cons.loss, gen_, dropout_);
      loss = r.loss;
    }
    if (stats_due) {  // one extra forward of the online network to observe its activations
      NoGradGuard ng;
      Generator g = dropout_;
      const Tensor sig =
          full({batch.images.size(0)}, sigmas[sigmas.size() / 2], {.device = cfg_.device});
      f(batch.images, sig, labels, {.dropout = &g, .observe = ctx.observe});
    }
  }

  const std::vector<Tensor> params = online_->parameters();
  bool ok;
  if (scaler_) {
    scaler_->scale(loss).backward();
    ok = scaler_->unscale_and_check(params);
  } else {
    loss.backward();
    ok = nn::grads_finite(params);
  }
  st.loss = loss.item<double>();
  st.grad_norm = cfg_.train.grad_clip > 0 ? nn::clip_grad_norm(params, cfg_.train.grad_clip)
                                          : nn::grad_norm(params);

  std::vector<Tensor> before;
  if (stats_due && ok) {
    NoGradGuard ng;
    for (const Tensor& p : params) before.push_back(clone(p));
  }
  if (ok) {
    opt_->step();
    if (target_ema_) target_ema_->update(st.mu);
    for (auto& e : emas_) e->step(cfg_.train.batch);
  } else {
    ++skipped_;
    st.skipped = true;
  }
  if (stats_due) {
    // per-parameter gradient and weight norms and the relative size of this step's update
    NoGradGuard ng;
    nlohmann::json layers = nlohmann::json::object();
    const auto named = online_->named_parameters();
    auto norm = [](const Tensor& t) {
      return std::sqrt(sum(square(to(t, DType::f64))).item<double>());
    };
    for (size_t i = 0; i < named.size(); ++i) {
      const auto& [name, p] = named[i];
      const double w = norm(p);
      nlohmann::json e = {{"weight_norm", w},
                          {"grad_norm", p.grad().defined() ? norm(p.grad()) : 0.0}};
      if (!before.empty()) e["update_ratio"] = w > 0 ? norm(sub(p, before[i])) / w : 0.0;
      layers[name] = e;
    }
    last_stats_ = {{"parameters", layers}, {"activations", last_activations_}};
  }
  opt_->zero_grad();
  ++step_;
  return st;
}

// ---- checkpoints
// ------------------------------------------------------------------------------------------
void Trainer::save_checkpoint(const std::string& path) const {
  std::map<std::string, Tensor> t;
  for (auto& [n, v] : online_->state_dict()) t["model." + n] = v;
  const auto named = online_->named_parameters();
  if (target_)
    for (auto& [n, v] : target_->named_parameters()) t["target." + n] = v;
  for (size_t k = 0; k < emas_.size(); ++k)
    for (size_t i = 0; i < named.size(); ++i)
      t["ema" + std::to_string(k) + "." + named[i].first] = emas_[k]->shadow()[i];
  for (auto& [n, v] : opt_->state()) t["opt." + n] = v;
  if (scaler_)
    for (auto& [n, v] : scaler_->state()) t["scaler." + n] = v;

  nlohmann::json emas = nlohmann::json::array();
  for (size_t k = 0; k < emas_.size(); ++k)
    emas.push_back({{"name", ema_name(*emas_[k], cfg_.train, k)},
                    {"updates", emas_[k]->updates()},
                    {"images_seen", emas_[k]->images_seen()}});
  std::map<std::string, std::string> meta = {
      {"format", "cm-checkpoint-1"},
      {"step", std::to_string(step_)},
      {"config", cfg_.resolved.dump()},
      {"gen", gen_str(gen_)},
      {"dropout", gen_str(dropout_)},
      {"loader_epoch", std::to_string(loader_->state().epoch)},
      {"loader_index", std::to_string(loader_->state().index)},
      {"skipped_steps", std::to_string(skipped_)},
      {"emas", emas.dump()},
      {"target_updates", std::to_string(target_ema_ ? target_ema_->updates() : 0)},
  };
  nn::save_safetensors(path, t, meta);
}

void Trainer::restore(const std::string& path) {
  nn::SafetensorsFile f(path);
  const auto& meta = f.metadata();
  auto need = [&](const std::string& k) -> const std::string& {
    auto it = meta.find(k);
    CM_CHECK(it != meta.end(), path, ": not a cm training checkpoint (metadata \"", k,
             "\" missing)");
    return it->second;
  };
  CM_CHECK(need("format") == "cm-checkpoint-1", path, ": unknown checkpoint format \"",
           need("format"), "\"");
  const Device dev = cfg_.device;
  auto prefixed = [&](const std::string& prefix) {
    std::map<std::string, Tensor> out;
    for (const std::string& n : f.names())
      if (n.rfind(prefix, 0) == 0) out[n.substr(prefix.size())] = f.get(n, std::nullopt, dev);
    return out;
  };
  try {
    online_->load_state_dict(prefixed("model."), true);
  } catch (const Error& e) {
    CM_FAIL(path,
            ": the checkpoint's model does not match the configuration's network: ", e.what());
  }
  const auto named = online_->named_parameters();
  if (target_) {
    std::map<std::string, Tensor> tw = prefixed("target.");
    CM_CHECK(!tw.empty(), path,
             ": the configuration has a target network but the checkpoint has none");
    std::map<std::string, Tensor> st;
    for (size_t i = 0; i < named.size(); ++i) {
      auto it = tw.find(named[i].first);
      CM_CHECK(it != tw.end(), path, ": target weight \"", named[i].first, "\" missing");
      st[std::to_string(i) + ".shadow"] = it->second;
    }
    st["updates"] =
        scalar_tensor(double(std::stoll(need("target_updates"))), {.dtype = DType::i64});
    st["images_seen"] = scalar_tensor(0, {.dtype = DType::f64});
    target_ema_->load_state(st);
  }
  const nlohmann::json emas = nlohmann::json::parse(need("emas"));
  CM_CHECK(emas.size() == emas_.size(), path, ": the checkpoint has ", emas.size(),
           " eval EMAs, the configuration ", emas_.size());
  for (size_t k = 0; k < emas_.size(); ++k) {
    std::map<std::string, Tensor> w = prefixed("ema" + std::to_string(k) + ".");
    std::map<std::string, Tensor> st;
    for (size_t i = 0; i < named.size(); ++i) {
      auto it = w.find(named[i].first);
      CM_CHECK(it != w.end(), path, ": EMA ", k, " weight \"", named[i].first, "\" missing");
      st[std::to_string(i) + ".shadow"] = it->second;
    }
    st["updates"] =
        scalar_tensor(double(emas[k].at("updates").get<int64_t>()), {.dtype = DType::i64});
    st["images_seen"] =
        scalar_tensor(emas[k].at("images_seen").get<double>(), {.dtype = DType::f64});
    emas_[k]->load_state(st);
  }
  opt_->load_state(prefixed("opt."));
  if (scaler_) scaler_->load_state(prefixed("scaler."));
  gen_ = gen_parse(need("gen"), "gen");
  dropout_ = gen_parse(need("dropout"), "dropout");
  loader_->set_state({std::stoull(need("loader_epoch")), std::stoull(need("loader_index"))});
  step_ = std::stoll(need("step"));
  skipped_ = std::stoll(need("skipped_steps"));
}

// ---- sampling
// ----------------------------------------------------------------------------------------------
const nn::SongUNet& Trainer::eval_network() const {
  NoGradGuard ng;
  scratch_->load_state_dict(online_->state_dict(), true);
  if (!emas_.empty()) emas_[0]->copy_to(*scratch_);
  scratch_->eval();
  return *scratch_;
}

std::vector<std::string> Trainer::write_sample_grids(const std::string& dir) const {
  const nn::SongUNet& net = eval_network();
  const int64_t n = cfg_.sample.grid;
  std::vector<uint64_t> seeds(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) seeds[size_t(i)] = uint64_t(i);
  const Shape img = {cfg_.network.in_channels, cfg_.network.img_resolution,
                     cfg_.network.img_resolution};
  Tensor labels;
  if (cfg_.network.label_dim > 0) {  // cycle through the classes
    std::vector<float> l(size_t(n * cfg_.network.label_dim), 0.f);
    for (int64_t i = 0; i < n; ++i)
      l[size_t(i * cfg_.network.label_dim + i % cfg_.network.label_dim)] = 1.f;
    labels = from_vector(l, {n, cfg_.network.label_dim}, {.device = cfg_.device});
  }
  char step[32];
  std::snprintf(step, sizeof step, "%08lld", static_cast<long long>(step_));
  std::vector<std::string> paths;
  auto write = [&](const Tensor& images, const std::string& kind) {
    const std::string p =
        (fs::path(dir) / ("grid-" + std::string(step) + "-" + kind + ".png")).string();
    // small images are enlarged so that the grid is at least 256 pixels wide
    const Tensor grid = make_grid(quantize(images));
    data::write_png(p, upscale_nearest(grid, std::max<int64_t>(1, 256 / grid.size(2))));
    paths.push_back(p);
  };
  if (cfg_.mode == "edm") {
    const consistency::Denoiser D = denoiser(net, consistency::Parameterization::Edm);
    const Tensor latents = consistency::per_image_noise(seeds, img, 0, cfg_.device);
    write(clamp(consistency::edm_heun_sample(D, latents, labels, cfg_.sample.teacher_steps), -1.0,
                1.0),
          "heun");
  } else {
    const consistency::Denoiser f = denoiser(net, consistency::Parameterization::Consistency);
    write(consistency::consistency_sample(f, seeds, img, labels, {}, cfg_.device), "1step");
    write(consistency::consistency_sample(f, seeds, img, labels,
                                          {.taus = cfg_.sample.two_step_taus}, cfg_.device),
          "2step");
  }
  return paths;
}

// ---- loading a network from a run
// ----------------------------------------------------------------------------
LoadedNetwork load_network(const std::string& source, const std::string& which, Device device,
                           bool allow_nonfinite) {
  std::string path = source;
  if (fs::is_directory(source)) path = RunDir::open(source).latest_checkpoint().string();
  CM_CHECK(fs::exists(path), source, ": no such checkpoint or run directory");
  nn::SafetensorsFile f(path);
  const auto& meta = f.metadata();
  CM_CHECK(meta.count("config") && meta.count("format"), path,
           ": not a cm checkpoint (no configuration in its metadata)");
  LoadedNetwork out;
  out.config = typed_config(nlohmann::json::parse(meta.at("config")));
  out.step = std::stoll(meta.at("step"));
  Generator unused(0);
  out.net = std::make_unique<nn::SongUNet>(out.config.network, unused);
  std::map<std::string, Tensor> model;
  for (const std::string& n : f.names())
    if (n.rfind("model.", 0) == 0) model[n.substr(6)] = f.get(n, std::nullopt, device);
  out.net->to(device);
  out.net->load_state_dict(model, true);
  const nlohmann::json emas = nlohmann::json::parse(meta.count("emas") ? meta.at("emas") : "[]");
  std::string prefix;
  if (which == "online") {
    out.weights = "online weights";
  } else if (which == "target") {
    CM_CHECK(f.contains("target." + out.net->named_parameters().front().first), path,
             ": the run has no separate target network (its target is the online network)");
    prefix = "target.";
    out.weights = "target network";
  } else if (which == "ema" || which.rfind("ema:", 0) == 0) {
    if (emas.empty()) {
      CM_CHECK(which == "ema", path, ": the run keeps no eval EMA");
      out.weights = "online weights (the run keeps no eval EMA)";
    } else {
      size_t k = 0;
      if (which != "ema") {
        const std::string want = which.substr(4);
        bool found = false;
        for (size_t i = 0; i < emas.size(); ++i)
          if (emas[i].at("name") == want) k = i, found = true;
        std::string names;
        for (const auto& e : emas)
          names += (names.empty() ? "" : ", ") + e.at("name").get<std::string>();
        CM_CHECK(found, path, ": no eval EMA \"", want, "\" (the run has ", names, ")");
      }
      prefix = "ema" + std::to_string(k) + ".";
      out.weights = "eval EMA " + emas[k].at("name").get<std::string>();
    }
  } else {
    CM_FAIL("weights \"", which, "\": expected ema, ema:<rate>, online or target");
  }
  if (!prefix.empty()) {
    NoGradGuard ng;
    for (auto& [n, p] : out.net->named_parameters()) {
      CM_CHECK(f.contains(prefix + n), path, ": ", out.weights, " weight \"", n, "\" missing");
      Tensor dst = p;
      copy_(dst, f.get(prefix + n, p.dtype(), device));
    }
  }
  out.weights += " at step " + std::to_string(out.step) + " of " + path;
  out.net->eval();
  return out;
}

}  // namespace cm::runner
