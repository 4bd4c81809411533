#include "runner/trainer.h"

#include <charconv>
#include <cmath>
#include <filesystem>
#include <optional>

#include "consistency/sampling.h"
#include "datasets/png.h"
#include "eval/lpips.h"
#include "nn/file_io.h"
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

// A whole string of decimal digits as an unsigned integer (no sign, space or trailing text).
std::optional<uint64_t> whole_u64(const std::string& s) {
  if (s.empty() || s.size() > 20 || s.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  uint64_t v = 0;
  const auto [end, err] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (err != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// A checkpoint's metadata, read strictly: every field's problem names the file and the field.
class CheckpointMeta {
 public:
  CheckpointMeta(const std::string& path, const std::map<std::string, std::string>& meta)
      : path_(path), meta_(meta) {}

  const std::string& text(const std::string& key) const {
    auto it = meta_.find(key);
    CM_CHECK(it != meta_.end(), path_, ": not a cm training checkpoint (metadata \"", key,
             "\" missing)");
    return it->second;
  }
  bool has(const std::string& key) const { return meta_.count(key) > 0; }

  void check_format() const {
    CM_CHECK(text("format") == "cm-checkpoint-1", path_,
             ": metadata \"format\": unknown checkpoint format \"", text("format"),
             "\" (this cm reads cm-checkpoint-1)");
  }

  // An integer in [lo, hi].
  int64_t integer(const std::string& key, int64_t lo, int64_t hi) const {
    const std::string& s = text(key);
    const auto v = whole_u64(s);
    CM_CHECK(v && *v >= uint64_t(lo) && *v <= uint64_t(hi), path_, ": metadata \"", key, "\": \"",
             s, "\" is not an integer in [", lo, ", ", hi, "]");
    return int64_t(*v);
  }
  uint64_t u64(const std::string& key) const {
    const std::string& s = text(key);
    const auto v = whole_u64(s);
    CM_CHECK(v.has_value(), path_, ": metadata \"", key, "\": \"", s,
             "\" is not a non-negative integer");
    return *v;
  }
  // "seed,offset" of a Philox generator.
  Generator generator(const std::string& key) const {
    const std::string& s = text(key);
    const size_t comma = s.find(',');
    const auto seed = whole_u64(s.substr(0, comma));
    const auto offset = comma == std::string::npos ? std::nullopt : whole_u64(s.substr(comma + 1));
    CM_CHECK(seed && offset, path_, ": metadata \"", key, "\": \"", s,
             "\" is not a generator state \"<seed>,<offset>\" of two non-negative integers");
    return Generator(*seed, *offset);
  }
  nlohmann::json json(const std::string& key) const {
    return nn::parse_json(text(key), path_ + ": metadata \"" + key + "\"");
  }
  // The run's configuration, validated as a configuration file is.
  RunConfig config() const {
    const std::string where = path_ + " (metadata \"config\")";
    return typed_config(resolve_config(json("config"), where));
  }
  // The eval EMAs' records: [{"name": string, "updates": integer, "images_seen": number}, ...],
  // updates and images seen bounded by the step.
  nlohmann::json emas(int64_t step) const {
    const nlohmann::json e = json("emas");
    const std::string where = path_ + ": metadata \"emas\"";
    CM_CHECK(e.is_array(), where, ": expected a list of EMA records, got ", e.dump());
    for (size_t k = 0; k < e.size(); ++k) {
      const nlohmann::json& r = e[k];
      CM_CHECK(r.is_object() && r.size() == 3 && r.contains("name") && r.contains("updates") &&
                   r.contains("images_seen"),
               where, "[", k, "]: expected {\"name\", \"updates\", \"images_seen\"}, got ",
               r.dump());
      CM_CHECK(r["name"].is_string() && !r["name"].get<std::string>().empty(), where, "[", k,
               "].name: expected a non-empty string, got ", r["name"].dump());
      CM_CHECK(r["updates"].is_number_integer() && r["updates"].get<int64_t>() >= 0 &&
                   r["updates"].get<int64_t>() <= step,
               where, "[", k, "].updates: expected an integer in [0, ", step, "], got ",
               r["updates"].dump());
      CM_CHECK(r["images_seen"].is_number() && std::isfinite(r["images_seen"].get<double>()) &&
                   r["images_seen"].get<double>() >= 0,
               where, "[", k, "].images_seen: expected a non-negative number, got ",
               r["images_seen"].dump());
      for (size_t j = 0; j < k; ++j)
        CM_CHECK(e[j]["name"] != r["name"], where, ": two EMAs are named ", r["name"].dump());
    }
    return e;
  }

 private:
  const std::string& path_;
  const std::map<std::string, std::string>& meta_;
};

// The tensors of `f` whose names start with one of `prefixes` (all when empty) that hold NaN or
// Inf, as "name (k of n values)"; at most `limit` of them, then a count of the rest.
// The tensors that hold NaN or Inf, as "<what>name (k of n values)", at most `limit` of them and
// then a count of the rest; *found is how many there are (counted with one transfer).
std::string nonfinite_list(const std::vector<std::string>& names,
                           const std::vector<Tensor>& tensors, size_t limit, size_t* found,
                           const std::string& what = "") {
  const std::vector<int64_t> bad = nn::count_nonfinite(tensors);
  std::string out;
  *found = 0;
  for (size_t i = 0; i < bad.size(); ++i) {
    if (bad[i] == 0) continue;
    if (++*found <= limit)
      out += std::string(out.empty() ? "" : ", ") + what + names[i] + " (" +
             std::to_string(bad[i]) + " of " + std::to_string(tensors[i].numel()) + " values)";
  }
  if (*found > limit) out += ", and " + std::to_string(*found - limit) + " more";
  return out;
}

std::string nonfinite_report(const nn::SafetensorsFile& f, const std::vector<std::string>& prefixes,
                             size_t* found) {
  std::vector<std::string> names;
  std::vector<Tensor> tensors;
  for (const std::string& n : f.names()) {
    bool take = prefixes.empty();
    for (const std::string& p : prefixes) take = take || n.rfind(p, 0) == 0;
    if (!take) continue;
    names.push_back(n);
    tensors.push_back(f.get(n));
  }
  return nonfinite_list(names, tensors, 5, found);
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

Trainer::Trainer(const RunConfig& cfg, const std::optional<std::string>& checkpoint, Logger* log,
                 dist::Communicator* comm)
    : cfg_(cfg),
      log_(log),
      comm_(comm ? comm : &dist::world()),
      gen_(stream_key(cfg.seed, kTrain)),
      dropout_(stream_key(cfg.seed, kDropout)) {
  CM_CHECK(cfg.network.preconditioning == consistency::Parameterization::Edm,
           "/network/preconditioning: \"",
           consistency::parameterization_name(cfg.network.preconditioning),
           "\": cm trains EDM teachers with EDM's preconditioning; a converted VP/VE baseline "
           "samples, evaluates, edits and teaches consistency distillation, but is not trained");
  cfg_.device = dist::rank_device(cfg.device, *comm_, "/device");  // one GPU per rank
  const Device dev = cfg_.device;
  if (dev.is_cuda())
    CM_CHECK(cuda::is_available(), "/device: \"", dev.str(),
             "\" was asked for, but no CUDA device is available");

  // Data.
  const data::Residency residency = cfg.data.storage == "memory"   ? data::Residency::Memory
                                    : cfg.data.storage == "stream" ? data::Residency::Stream
                                                                   : data::Residency::Auto;
  data::ImageDataset ds = data::load_dataset(cfg.data.dataset, {.residency = residency});
  const NetworkConfig& net = cfg.network;
  CM_CHECK(ds.channels() == net.in_channels() && ds.height() == net.img_resolution() &&
               ds.width() == net.img_resolution(),
           "/data/dataset: \"", cfg.data.dataset, "\" has images of shape ",
           shape_str({ds.channels(), ds.height(), ds.width()}), ", but the network expects [",
           net.in_channels(), ", ", net.img_resolution(), ", ", net.img_resolution(),
           "] (set network.img_resolution / in_channels / out_channels)");
  if (cfg.data.labels) {
    CM_CHECK(ds.num_classes > 0, "/data/labels: the data set \"", cfg.data.dataset,
             "\" has no labels");
    CM_CHECK(net.label_dim() == ds.num_classes, "/data/labels: the data set has ", ds.num_classes,
             " classes, but network.label_dim is ", net.label_dim());
  } else {
    CM_CHECK(net.label_dim() == 0, "/network/label_dim: ", net.label_dim(),
             " makes a conditional network; set data.labels to true to train it on labels");
  }
  CM_CHECK(cfg.train.batch <= ds.size(), "/train/batch: ", cfg.train.batch,
           " is larger than the data set (", ds.size(), " images)");
  const int ranks = comm_->size();
  CM_CHECK(cfg.train.batch % ranks == 0, "/train/batch: ", cfg.train.batch,
           " images do not split evenly among the job's ", ranks,
           " ranks (the global batch is divided among them: use a multiple of ", ranks, ")");
  loader_ = std::make_unique<data::Loader>(
      std::move(ds), data::LoaderOptions{.batch_size = cfg.train.batch,
                                         .seed = stream_key(cfg.seed, kData),
                                         .random_flip = cfg.data.flip,
                                         .random_crop = cfg.data.random_crop,
                                         .labels = cfg.data.labels,
                                         .read_threads = cfg.data.read_threads,
                                         .shard_index = comm_->rank(),
                                         .shard_count = ranks,
                                         .device = dev});

  // Networks.
  Generator init(stream_key(cfg.seed, kInit));
  online_ = net.make(init);
  online_->to(dev);
  online_->flatten_parameters();  // nn/flat.h: the optimizer and the EMAs a buffer at a time
  if (ranks > 1) {                // every rank starts from rank 0's weights
    for (const nn::FlatBuffers::Group& g : online_->flat_parameters()->params().groups()) {
      Tensor d = g.data;
      comm_->broadcast(d, 0);
    }
  }
  if (comm_->engine() != "local") {  // gradient buckets averaged while backward goes on
    reducer_ = std::make_unique<dist::GradientReducer>(
        online_->flat_parameters(), *comm_,
        dist::ReducerOptions::of_mib(cfg.train.allreduce_bucket_mb));
  }
  if (cfg.mode == "cd") {
    LoadedNetwork t = load_network(cfg.cons.teacher, "ema", dev);
    CM_CHECK(t.config.mode == "edm", "/consistency/teacher: \"", cfg.cons.teacher, "\" is a ",
             t.config.mode, " run; a teacher is an EDM run (mode edm)");
    teacher_ = std::move(t.net);
    teacher_noise_labels_ = t.config.network.noise_labels;  // the teacher's own conventions
    teacher_preconditioning_ = t.config.network.preconditioning;
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
    CM_CHECK(fs::is_regular_file(cfg.cons.lpips_weights),
             "/consistency/lpips/weights: no such file: \"", cfg.cons.lpips_weights,
             "\" (make one with tools/convert_lpips.py)");
    std::shared_ptr<const eval::Lpips> lpips = eval::load_lpips(
        cfg.cons.lpips_weights, eval::LpipsOptions::variant(cfg.cons.lpips_variant), dev);
    cfg_.cons.loss.learned_distance = [lpips](const Tensor& a, const Tensor& b) {
      return lpips->forward(a, b);
    };
    if (log_) log_->line("lpips: " + cfg.cons.lpips_weights + " (" + cfg.cons.lpips_variant + ")");
  }
  if ((cfg.mode == "ct" || cfg.mode == "cd") && target_needs_network(cfg.cons.schedule)) {
    Generator unused(0);
    target_ = net.make(unused);
    target_->to(dev);
    target_->flatten_parameters(false);  // the target EMA: one lerp per buffer
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
  scratch_ = net.make(unused);
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

consistency::Denoiser Trainer::denoiser(const nn::Network& net,
                                        consistency::Parameterization p) const {
  return consistency::Denoiser(net, p, cfg_.network.noise_labels, cfg_.noise, cfg_.precision);
}

StepStats Trainer::train_step() {
  StepStats st;
  st.lr = nn::warmup_lr(cfg_.train.lr, double(step_), double(cfg_.train.warmup_steps));
  opt_->set_lr(st.lr);
  const data::Batch batch = loader_->next();
  const Tensor labels = cfg_.data.labels ? batch.labels : Tensor();
  online_->train();

  nn::ForwardContext ctx{.dropout = &dropout_};
  // this rank's rows of the batch's draws (the loss's indices and noise, the dropout masks)
  std::optional<ShardGuard> shard_gen, shard_dropout;
  if (comm_->size() > 1) {
    shard_gen.emplace(gen_, comm_->rank(), comm_->size());
    shard_dropout.emplace(dropout_, comm_->rank(), comm_->size());
  }
  const bool stats_due =
      cfg_.train.layer_stats_every > 0 && (step_ + 1) % cfg_.train.layer_stats_every == 0;
  if (stats_due) {
    last_activations_ = nlohmann::json::object();
    ctx.observe = [this](const std::string& name, const Tensor& y) {
      NoGradGuard ng;
      const Tensor f = to(detach(y), DType::f32);
      double m = mean(f).item<double>(), sd = std(f).item<double>();
      if (comm_->size() > 1) pool_over_ranks(double(f.numel()), m, sd);
      last_activations_[name] = {{"mean", m}, {"std", sd}};
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
      const consistency::Denoiser teacher(*teacher_, teacher_preconditioning_,
                                          teacher_noise_labels_, cfg_.noise, cfg_.precision);
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

  shard_gen.reset();
  shard_dropout.reset();
  const std::vector<Tensor> params = online_->parameters();
  bool ok;
  st.loss = loss.item<double>();
  if (reducer_) reducer_->prepare();
  if (scaler_) {
    scaler_->scale(loss).backward();
    average_over_ranks(st.loss);
    ok = scaler_->unscale_and_check(params);
  } else {
    loss.backward();
    average_over_ranks(st.loss);
    ok = nn::grads_finite(params);
  }
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
    consecutive_skipped_ = 0;
  } else {
    ++skipped_;
    ++consecutive_skipped_;
    st.skipped = true;
    report_skipped_step(st.loss);
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

void Trainer::average_over_ranks(double& loss) {
  if (!reducer_) return;
  NoGradGuard ng;
  reducer_->finish();
  Tensor l = scalar_tensor(loss, {.dtype = DType::f64});
  comm_->all_reduce(l, dist::ReduceOp::Average);
  loss = l.item<double>();
}

// The mean and (unbiased) std of the whole batch from each rank's of its shard of n elements
// (Chan et al.'s pairwise combination of counts, means and sums of squared deviations), so that a
// data-parallel run's activation statistics are the batch's, as a single process's are.
void Trainer::pool_over_ranks(double n, double& mean_out, double& std_out) const {
  const Tensor mine =
      from_vector<double>({n, mean_out, std_out * std_out * (n - 1)}, {3}, {.dtype = DType::f64});
  const std::vector<double> all = comm_->all_gather(mine).contiguous().to_vector<double>();
  double count = 0, mu = 0, m2 = 0;
  for (size_t r = 0; r < all.size(); r += 3) {
    const double nb = all[r], delta = all[r + 1] - mu, total = count + nb;
    if (total == 0) continue;
    mu += delta * nb / total;
    m2 += all[r + 2] + delta * delta * count * nb / total;
    count = total;
  }
  mean_out = mu;
  std_out = count > 1 ? std::sqrt(m2 / (count - 1)) : 0.0;
}

// A step whose gradients are not finite was skipped: say which tensors, and stop the run when it
// cannot recover (the weights themselves are not finite) or has skipped too many steps in a row.
void Trainer::report_skipped_step(double loss) {
  const auto named = online_->named_parameters();
  std::vector<Tensor> grads, weights;
  for (const auto& [n, p] : named) {
    grads.push_back(p.grad());
    weights.push_back(p);
  }
  std::vector<std::string> names;
  for (const auto& [n, p] : named) names.push_back(n);
  size_t bad_weights = 0, bad_grads = 0;
  const std::string weights_text =
      nonfinite_list(names, weights, 3, &bad_weights, "the weights of ");
  const long long k = static_cast<long long>(step_ + 1);
  CM_CHECK(bad_weights == 0, "step ", k, ": the network's weights are not finite: ", weights_text,
           "; the run diverged (learning rate too high? Adam's eps 0?) and stops here. No "
           "checkpoint holds these weights: resume from the last one with other settings");
  if (scaler_) return;  // f16: the loss scaler halves its scale and tries again, as designed
  const std::string grads_text = nonfinite_list(names, grads, 3, &bad_grads, "the gradient of ");
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", loss);
  const std::string what = "step " + std::to_string(k) + ": loss " + buf + ", non-finite " +
                           (bad_grads ? grads_text : std::string("gradients")) +
                           "; the update was skipped (" + std::to_string(consecutive_skipped_) +
                           " in a row)";
  if (log_) log_->line(what);
  const int64_t limit = cfg_.train.max_skipped_steps;
  CM_CHECK(limit == 0 || consecutive_skipped_ < limit, what, ": ", limit,
           " steps in a row had non-finite gradients (train.max_skipped_steps), so the run stops "
           "here (skipped steps leave the weights as they were: its checkpoints hold only finite "
           "values; resume from the last one with a lower learning rate or other settings)");
}

// ---- checkpoints
// ------------------------------------------------------------------------------------------
void Trainer::save_checkpoint(const std::string& path) const {
  std::map<std::string, Tensor> t;
  for (auto& [n, v] : online_->state_dict()) t["model." + n] = v;
  const auto named = online_->named_parameters();
  // the target and every EMA with the network's buffers (the resampling filters), so that each
  // prefix is a whole state dict: a strict load_state_dict of it works, in cm or in PyTorch
  const auto buffers = online_->named_buffers();
  if (target_) {
    for (auto& [n, v] : target_->named_parameters()) t["target." + n] = v;
    for (auto& [n, v] : buffers) t["target." + n] = v;
  }
  for (size_t k = 0; k < emas_.size(); ++k) {
    const std::string prefix = "ema" + std::to_string(k) + ".";
    for (size_t i = 0; i < named.size(); ++i) t[prefix + named[i].first] = emas_[k]->shadow()[i];
    for (auto& [n, v] : buffers) t[prefix + n] = v;
  }
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
  {
    // never a checkpoint of a diverged state, over or beside good ones
    std::vector<std::string> names;
    std::vector<Tensor> tensors;
    for (const auto& [n, v] : t) {
      names.push_back(n);
      tensors.push_back(v);
    }
    size_t found = 0;
    const std::string list = nonfinite_list(names, tensors, 5, &found);
    CM_CHECK(found == 0, "step ", step_, ": not writing the checkpoint ", path, ": ", found,
             " tensor", found > 1 ? "s hold" : " holds", " non-finite values: ", list,
             "; the earlier checkpoints are kept");
  }
  nn::save_safetensors(path, t, meta);
}

void Trainer::restore(const std::string& path) {
  nn::require_regular_file(path, "checkpoint");
  nn::SafetensorsFile f(path);
  const CheckpointMeta meta(path, f.metadata());
  meta.check_format();
  const int64_t step = meta.integer("step", 0, int64_t(1e12));
  {
    size_t n = 0;
    const std::string bad = nonfinite_report(f, {}, &n);
    CM_CHECK(n == 0, path, ": ", n, " tensor", n > 1 ? "s hold" : " holds",
             " non-finite values (NaN or Inf): ", bad,
             "; a diverged state cannot be resumed (remove this checkpoint to resume from an "
             "earlier one)");
  }
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
        scalar_tensor(double(meta.integer("target_updates", 0, step)), {.dtype = DType::i64});
    st["images_seen"] = scalar_tensor(0, {.dtype = DType::f64});
    target_ema_->load_state(st);
  } else {
    (void)meta.integer("target_updates", 0, step);
  }
  const nlohmann::json emas = meta.emas(step);
  CM_CHECK(emas.size() == emas_.size(), path, ": metadata \"emas\": the checkpoint has ",
           emas.size(), " eval EMAs, the configuration ", emas_.size());
  for (size_t k = 0; k < emas_.size(); ++k) {
    const std::string want = ema_name(*emas_[k], cfg_.train, k);
    CM_CHECK(emas[k]["name"] == want, path, ": metadata \"emas\"[", k, "].name is ",
             emas[k]["name"].dump(), ", but the configuration's EMA ", k, " is \"", want, "\"");
    std::map<std::string, Tensor> w = prefixed("ema" + std::to_string(k) + ".");
    std::map<std::string, Tensor> st;
    for (size_t i = 0; i < named.size(); ++i) {
      auto it = w.find(named[i].first);
      CM_CHECK(it != w.end(), path, ": EMA ", k, " weight \"", named[i].first, "\" missing");
      st[std::to_string(i) + ".shadow"] = it->second;
    }
    st["updates"] = scalar_tensor(double(emas[k]["updates"].get<int64_t>()), {.dtype = DType::i64});
    st["images_seen"] = scalar_tensor(emas[k]["images_seen"].get<double>(), {.dtype = DType::f64});
    emas_[k]->load_state(st);
  }
  opt_->load_state(prefixed("opt."));
  if (scaler_) scaler_->load_state(prefixed("scaler."));
  gen_ = meta.generator("gen");
  dropout_ = meta.generator("dropout");
  const uint64_t epoch = meta.u64("loader_epoch");
  const int64_t index = meta.integer("loader_index", 0, loader_->batches_per_epoch() - 1);
  loader_->set_state({epoch, uint64_t(index)});
  step_ = step;
  skipped_ = meta.integer("skipped_steps", 0, step);
}

// ---- sampling
// ----------------------------------------------------------------------------------------------
const nn::Network& Trainer::eval_network() const {
  NoGradGuard ng;
  scratch_->load_state_dict(online_->state_dict(), true);
  if (!emas_.empty()) emas_[0]->copy_to(*scratch_);
  scratch_->eval();
  return *scratch_;
}

std::vector<std::string> Trainer::sample_grid_paths(const std::string& dir) const {
  char step[32];
  std::snprintf(step, sizeof step, "%08lld", static_cast<long long>(step_));
  std::vector<std::string> out;
  for (const char* kind : cfg_.mode == "edm" ? std::vector<const char*>{"heun"}
                                             : std::vector<const char*>{"1step", "2step"})
    out.push_back((fs::path(dir) / ("grid-" + std::string(step) + "-" + kind + ".png")).string());
  return out;
}

std::vector<std::string> Trainer::write_sample_grids(const std::string& dir) const {
  const nn::Network& net = eval_network();
  const int64_t n = cfg_.sample.grid;
  std::vector<uint64_t> seeds(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) seeds[size_t(i)] = uint64_t(i);
  const Shape img = {cfg_.network.in_channels(), cfg_.network.img_resolution(),
                     cfg_.network.img_resolution()};
  Tensor labels;
  const int64_t classes = cfg_.network.label_dim();
  if (classes > 0) {  // cycle through the classes
    std::vector<int64_t> k(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) k[size_t(i)] = i % classes;
    labels = consistency::one_hot_classes(k, classes, cfg_.device);
  }
  char step[32];
  std::snprintf(step, sizeof step, "%08lld", static_cast<long long>(step_));
  std::vector<std::string> paths;
  auto write = [&](const Tensor& images, const std::string& kind) {
    const std::string p =
        (fs::path(dir) / ("grid-" + std::string(step) + "-" + kind + ".png")).string();
    const int64_t bad = nn::count_nonfinite({images})[0];
    CM_CHECK(bad == 0, "step ", step_, ": the ", kind, " samples of the eval network hold ", bad,
             " non-finite values of ", images.numel(), "; not writing ", p,
             " (the weights are finite: the network overflows)");
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
  nn::require_regular_file(path, "checkpoint");
  nn::SafetensorsFile f(path);
  CM_CHECK(f.metadata().count("config") && f.metadata().count("format"), path,
           ": not a cm checkpoint (no configuration in its metadata)");
  const CheckpointMeta meta(path, f.metadata());
  meta.check_format();
  LoadedNetwork out;
  out.config = meta.config();
  out.step = meta.integer("step", 0, int64_t(1e12));
  const nlohmann::json emas = meta.has("emas") ? meta.emas(out.step) : nlohmann::json::array();
  const size_t configured =
      out.config.train.ema_halflife_kimg > 0 ? 1 : out.config.train.ema.size();
  CM_CHECK(emas.size() == configured, path, ": metadata \"emas\" lists ", emas.size(),
           " eval EMAs, but the run's configuration keeps ", configured);
  std::string prefix;
  if (which == "online") {
    out.weights = "online weights";
  } else if (which == "target") {
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
          if (emas[i]["name"] == want) k = i, found = true;
        std::string names;
        for (const auto& e : emas)
          names += (names.empty() ? "" : ", ") + e["name"].get<std::string>();
        CM_CHECK(found, path, ": no eval EMA \"", want, "\" (the run has ", names, ")");
      }
      prefix = "ema" + std::to_string(k) + ".";
      out.weights = "eval EMA " + emas[k]["name"].get<std::string>();
    }
  } else {
    CM_FAIL("weights \"", which, "\": expected ema, ema:<rate>, online or target");
  }
  // The tensors this network is made of: the model's buffers and weights, and the chosen copy.
  {
    size_t n = 0;
    const std::string bad =
        nonfinite_report(f,
                         prefix.empty() ? std::vector<std::string>{"model."}
                                        : std::vector<std::string>{"model.", prefix},
                         &n);
    if (n > 0) {
      const std::string msg = path + ": " + std::to_string(n) + " tensor" +
                              (n > 1 ? "s hold" : " holds") +
                              " non-finite values (NaN or Inf): " + bad;
      CM_CHECK(allow_nonfinite, msg,
               "; the run diverged before this checkpoint (pass --allow-nonfinite to load it "
               "anyway, for forensics)");
      std::fprintf(stderr, "warning: %s (loaded anyway: --allow-nonfinite)\n", msg.c_str());
    }
  }
  Generator unused(0);
  out.net = out.config.network.make(unused);
  std::map<std::string, Tensor> model;
  for (const std::string& n : f.names())
    if (n.rfind("model.", 0) == 0) model[n.substr(6)] = f.get(n, std::nullopt, device);
  out.net->to(device);
  try {
    out.net->load_state_dict(model, true);
  } catch (const Error& e) {
    CM_FAIL(path,
            ": the checkpoint's model does not match its configuration's network: ", e.what());
  }
  if (prefix == "target.")
    CM_CHECK(f.contains("target." + out.net->named_parameters().front().first), path,
             ": the run has no separate target network (its target is the online network)");
  if (!prefix.empty()) {
    NoGradGuard ng;
    for (auto& [n, p] : out.net->named_parameters()) {
      CM_CHECK(f.contains(prefix + n), path, ": ", out.weights, " weight \"", n, "\" missing");
      const Tensor w = f.get(prefix + n, p.dtype(), device);
      CM_CHECK(w.shape() == p.shape(), path, ": ", out.weights, " weight \"", n, "\" has shape ",
               shape_str(w.shape()), ", the network's is ", shape_str(p.shape()));
      Tensor dst = p;
      copy_(dst, w);
    }
  }
  if (meta.has("converted_from")) {  // tools/convert_openai_pt.py
    const nlohmann::json src = meta.json("converted_from");
    auto field = [&](const char* k, const std::string& otherwise) {
      return src.is_object() && src.contains(k) && src[k].is_string() ? src[k].get<std::string>()
                                                                      : otherwise;
    };
    out.weights = "weights converted from " + field("file", src.dump()) + " by " +
                  field("tool", "a converter");
  }
  out.weights += " at step " + std::to_string(out.step) + " of " + path;
  out.net->eval();
  return out;
}

}  // namespace cm::runner
