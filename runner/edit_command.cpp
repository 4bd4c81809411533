#include "runner/edit_command.h"

#include "runner/progress.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "consistency/editing.h"
#include "consistency/sampling.h"
#include "datasets/dataset.h"
#include "datasets/npz.h"
#include "datasets/png.h"
#include "eval/classifier.h"
#include "nn/atomic_file.h"
#include "nn/optim.h"
#include "runner/cli.h"
#include "runner/evaluate.h"
#include "runner/images.h"
#include "runner/progress.h"
#include "runner/trainer.h"

namespace fs = std::filesystem;

namespace cm::runner {

namespace {

using consistency::EditTransform;

// u8 [N, C, H, W] -> f32 in [−1, 1].
Tensor to_unit(const Tensor& u8) {
  return sub(div(to(u8, DType::f32), 127.5), 1.0);
}

// The images to edit: the first n of a data set, or PNG files, as u8 [N, C, H, W]; `labels`
// gets the data set's labels of those images (i64 [N], −1 where unlabelled; undefined for PNGs or
// a data set without classes) and `num_classes` its class count.
Tensor load_inputs(const EditCommand& c, Tensor* labels, int64_t* num_classes) {
  CM_CHECK(c.data || !c.images.empty(), "--task ", c.task,
           " needs the images to edit: --data SPEC [--n N] or --images A.png,B.png,...");
  CM_CHECK(!(c.data && !c.images.empty()), "give --data or --images, not both");
  if (c.data) {
    const data::ImageDataset d = eval::load_split(*c.data);  // data set specs and digits:test
    CM_CHECK(c.n <= d.size(), "--n ", c.n, ": --data ", *c.data, " has only ", d.size(), " images");
    if (d.num_classes > 0) {
      *labels = narrow(d.labels, 0, 0, c.n).contiguous();
      *num_classes = d.num_classes;
    }
    return d.rows(0, c.n).contiguous();
  }
  std::vector<Tensor> v;
  for (const std::string& p : c.images) {
    v.push_back(data::read_png(p));
    CM_CHECK(v.back().shape() == v.front().shape(), "--images: ", p, " is ",
             shape_str(v.back().shape()), " (C×H×W) but ", c.images.front(), " is ",
             shape_str(v.front().shape()));
  }
  return stack(v, 0);
}

// Ω for inpainting: a built-in region or a PNG whose white pixels are to be generated.
Tensor inpainting_mask(const std::string& spec, int64_t channels, int64_t res,
                       const std::vector<uint64_t>& seeds) {
  const std::string known =
      " (builtin:center, builtin:left, builtin:top, builtin:letter[:A-Z], builtin:boxes[:K])";
  if (spec == "builtin:center") return consistency::center_square_mask(channels, res, res);
  if (spec == "builtin:left") return consistency::box_mask(channels, res, res, 0, 0, res, res / 2);
  if (spec == "builtin:top") return consistency::box_mask(channels, res, res, 0, 0, res / 2, res);
  if (spec == "builtin:letter" || spec.rfind("builtin:letter:", 0) == 0) {
    const std::string l = spec == "builtin:letter" ? "S" : spec.substr(15);
    CM_CHECK(l.size() == 1 && l[0] >= 'A' && l[0] <= 'Z', "--mask ", spec,
             ": the letter must be one capital A-Z");
    CM_CHECK(res >= 7, "--mask ", spec, ": the model's ", res, "×", res,
             " images are smaller than the 5×7 font");
    return consistency::letter_mask(channels, res, res, l[0]);
  }
  if (spec == "builtin:boxes" || spec.rfind("builtin:boxes:", 0) == 0) {
    const std::vector<double> k = spec == "builtin:boxes"
                                      ? std::vector<double>{3}
                                      : parse_numbers(spec.substr(14), "--mask builtin:boxes:K");
    CM_CHECK(k.size() == 1 && k[0] >= 1 && k[0] <= 100 && k[0] == std::floor(k[0]), "--mask ", spec,
             ": the number of boxes must be a whole number from 1 to 100");
    return consistency::random_boxes_mask(seeds, channels, res, res, int64_t(k[0]));
  }
  CM_CHECK(spec.rfind("builtin:", 0) != 0, "--mask ", spec, ": unknown built-in mask", known);
  const Tensor png = data::read_png(spec);  // [c, H, W] u8
  CM_CHECK(png.size(1) == res && png.size(2) == res, "--mask ", spec, " is ", png.size(1), "×",
           png.size(2), ", the model's images are ", res, "×", res);
  const Tensor white = to(gt(select(png, 0, 0), 127.0), DType::f32);  // [H, W]
  return contiguous(expand(reshape(white, {1, 1, res, res}), {1, channels, res, res}));
}

Tensor nhwc(const Tensor& u8) {
  return contiguous(permute(u8, {0, 2, 3, 1}));
}

}  // namespace

int run_edit(const EditCommand& c) {
  const Device dev = Device::parse(c.device);
  LoadedNetwork m = load_network(c.source, c.weights, dev, c.allow_nonfinite);
  const RunConfig& cfg = m.config;
  const int64_t C = cfg.network.in_channels(), R = cfg.network.img_resolution();
  const consistency::NoiseConstants& nc = cfg.noise;
  // f of Algorithm 4: the consistency model, or an EDM teacher's ODE solved from each τ (the
  // function a consistency model distils), run through the same algorithm as a baseline
  const bool teacher = cfg.mode == "edm";
  const consistency::Denoiser net(
      *m.net, teacher ? cfg.network.preconditioning : consistency::Parameterization::Consistency,
      cfg.network.noise_labels, nc);
  // f, for images of the given classes (one-hot rows; undefined for an unconditional model)
  auto make_f = [&](const Tensor& labels) {
    return teacher ? consistency::teacher_ode_function(net, c.teacher_steps, labels)
                   : consistency::consistency_function(net, labels);
  };
  const int64_t classes = cfg.network.label_dim();
  std::optional<int64_t> fixed_class;
  if (!c.class_choice.empty() && c.class_choice != "data" && c.class_choice != "random")
    fixed_class = std::stoll(c.class_choice);  // digits only (checked by the command line)
  check_class_choice(m, fixed_class, !c.class_choice.empty());
  // The classes of images edited from `seeds` (with the data set's labels when given).
  auto class_rows = [&](const std::vector<uint64_t>& seeds, const Tensor& data_labels,
                        int64_t data_classes, json& recipe) -> Tensor {
    if (classes == 0) return Tensor();
    std::vector<int64_t> k;
    const bool use_data =
        c.class_choice == "data" || (c.class_choice.empty() && data_labels.defined());
    if (use_data) {
      CM_CHECK(data_labels.defined(), "--class data: the images have no labels (",
               c.data ? "--data " + *c.data + " has no classes" : std::string("PNG files"),
               "); give --class K or random");
      CM_CHECK(data_classes <= classes, "--data ", *c.data, " has ", data_classes,
               " classes, the model ", classes);
      k = data_labels.to_vector<int64_t>();
      for (size_t i = 0; i < k.size(); ++i)
        CM_CHECK(k[i] >= 0, "--class data: image ", i, " of --data ", *c.data,
                 " is unlabelled; give --class K or random");
      recipe["class"] = "the images' own labels";
    } else {
      k = image_classes(seeds, classes, fixed_class);
      recipe["class"] = fixed_class ? json(*fixed_class) : json("random (each seed's own)");
    }
    return consistency::one_hot_classes(k, classes, dev);
  };
  const Shape image = {C, R, R};
  NoGradGuard ng;

  // The time points: --sigmas, or the model's own grid from σ_max (σ_min only ends it); a
  // teacher's: CD's grid of its sample steps (18)
  std::vector<double> grid = consistency::karras_sigmas(
      teacher ? cfg.sample.teacher_steps : cfg.cons.schedule.n(m.step), nc);
  grid.pop_back();
  std::vector<double> taus = c.sigmas.empty() ? grid : parse_numbers(c.sigmas, "--sigmas");

  Tensor reference, degraded, result, mask;
  std::vector<uint64_t> seeds;
  json recipe = {{"task", c.task}, {"weights", m.weights}};
  if (teacher) recipe["teacher_heun_steps"] = c.teacher_steps;
  if (c.task == "interpolate") {
    seeds = parse_seeds(c.seeds.empty() ? "0,1" : c.seeds);
    CM_CHECK(seeds.size() == 2, "--task interpolate: --seeds names the two endpoints (A,B), got ",
             seeds.size(), " seeds");
    CM_CHECK(c.n >= 2, "--task interpolate: --n is the number of points, at least 2");
    // spherical interpolation between the two endpoints' initial noises; one step from σ_max
    const Tensor za = contiguous(consistency::per_image_noise({seeds[0]}, image, 0, dev));
    const Tensor zb = contiguous(consistency::per_image_noise({seeds[1]}, image, 0, dev));
    const double dot = sum(mul(to(za, DType::f64), to(zb, DType::f64))).item<double>();
    const double na = std::sqrt(sum(square(to(za, DType::f64))).item<double>());
    const double nb = std::sqrt(sum(square(to(zb, DType::f64))).item<double>());
    const double theta = std::acos(std::clamp(dot / (na * nb), -1.0, 1.0));
    std::vector<Tensor> points;
    for (int64_t k = 0; k < c.n; ++k) {
      const double t = double(k) / double(c.n - 1);
      const double wa = theta < 1e-6 ? 1 - t : std::sin((1 - t) * theta) / std::sin(theta);
      const double wb = theta < 1e-6 ? t : std::sin(t * theta) / std::sin(theta);
      // the endpoints are the seeds' own noises, exactly
      points.push_back(k == 0 ? za : k == c.n - 1 ? zb : add(mul(za, wa), mul(zb, wb)));
    }
    const Tensor z = cat(points, 0);
    // one class along the strip: --class K, or the first seed's own
    Tensor labels;
    if (classes > 0) {
      CM_CHECK(c.class_choice != "data", "--class data: an interpolation has no images");
      const int64_t k = image_classes({seeds[0]}, classes, fixed_class)[0];
      labels = consistency::one_hot_classes(std::vector<int64_t>(size_t(c.n), k), classes, dev);
      recipe["class"] = k;
    }
    result = clamp(make_f(labels)(mul(z, nc.sigma_max), nc.sigma_max), -1.0, 1.0);
    recipe["seeds"] = {seeds[0], seeds[1]};
    recipe["points"] = c.n;
    recipe["sigmas"] = {nc.sigma_max};
  } else {
    Tensor data_labels;
    int64_t data_classes = 0;
    const Tensor inputs = load_inputs(c, &data_labels, &data_classes);
    CM_CHECK(inputs.size(1) == C && inputs.size(2) == R && inputs.size(3) == R, "the images are ",
             shape_str(Shape(inputs.shape().begin() + 1, inputs.shape().end())),
             " (C×H×W), the model's are [", C, ", ", R, ", ", R, "]");
    const int64_t n = inputs.size(0);
    reference = to(to_unit(inputs), dev);
    seeds = parse_seeds(c.seeds.empty() ? "0-" + std::to_string(n - 1) : c.seeds);
    CM_CHECK(int64_t(seeds.size()) == n, "--seeds: ", seeds.size(), " seeds for ", n, " images");
    recipe["images"] =
        c.data ? json(*c.data + " (the first " + std::to_string(n) + ")") : json(c.images);
    recipe["seeds"] = seeds;
    const consistency::EditFunction f =
        make_f(class_rows(seeds, data_labels, data_classes, recipe));
    if (c.task == "denoise") {
      const double s = c.sigma.value_or(0.5);
      CM_CHECK(s >= nc.sigma_min && s <= nc.sigma_max, "--sigma ", s,
               ": outside [sigma_min, sigma_max] = [", nc.sigma_min, ", ", nc.sigma_max, "]");
      degraded = add(reference, mul(consistency::per_image_noise(seeds, image, 0, dev), s));
      result = clamp(f(degraded, s), -1.0, 1.0);
      recipe["sigma"] = s;
    } else {
      EditTransform a = consistency::identity_transform();
      consistency::EditOptions o;
      if (c.task == "inpaint") {
        mask = inpainting_mask(c.mask, C, R, seeds);
        recipe["mask"] = c.mask;
      } else if (c.task == "colorize") {
        CM_CHECK(C == 3, "--task colorize: the model makes ", C,
                 "-channel images; colorization needs an RGB model");
        a = consistency::colorization_transform();
        mask = consistency::colorization_mask(R, R);
      } else if (c.task == "superres") {
        CM_CHECK(c.patch >= 2 && R % c.patch == 0, "--patch ", c.patch,
                 ": must be at least 2 and divide the image size ", R);
        a = consistency::superres_transform(c.patch);
        mask = consistency::superres_mask(C, R, R, c.patch);
        recipe["patch"] = c.patch;
      } else {
        CM_CHECK(c.task == "stroke", "--task ", c.task,
                 ": expected inpaint, colorize, superres, stroke, denoise or interpolate");
        // SDEdit-like: no constraint, from the painting itself at an intermediate τ_1
        const double s = c.sigma.value_or(20.0);
        CM_CHECK(s >= nc.sigma_min && s <= nc.sigma_max, "--sigma ", s,
                 ": outside [sigma_min, sigma_max] = [", nc.sigma_min, ", ", nc.sigma_max, "]");
        mask = ones({1, C, R, R});
        o.fill = std::nullopt;
        if (c.sigmas.empty()) {
          taus = {s};
          for (double t : grid)
            if (t < s) taus.push_back(t);
        }
        recipe["sigma"] = s;
      }
      o.taus = taus;
      TerminalProgress bar(int64_t(taus.size()), "time points");
      o.on_point = [&](size_t done) { bar.update(int64_t(done)); };
      const consistency::EditResult r = consistency::edit(f, nc, reference, a, mask, seeds, o);
      degraded = r.degraded;
      result = r.result;
      recipe["sigmas"] = taus;
    }
  }
  const int64_t bad = nn::count_nonfinite({result})[0];
  CM_CHECK(bad == 0 || c.allow_nonfinite, "the model produced ", bad,
           " non-finite values (NaN or Inf); the weights may be diverged; see --allow-nonfinite");

  // Outputs.
  const fs::path src(c.source);
  const fs::path base = fs::is_directory(src) ? src : src.parent_path();
  const fs::path out = c.out ? fs::path(*c.out) : base / ("edits-" + c.task);
  fs::create_directories(out);
  nn::remove_stale_temporaries(out.string());
  const Tensor res_u8 = quantize(to(result, Device::cpu()));
  for (int64_t k = 0; k < res_u8.size(0); ++k) {
    char name[32];
    std::snprintf(name, sizeof name, "result-%04lld.png", static_cast<long long>(k));
    data::write_png((out / name).string(), select(res_u8, 0, k));
  }
  std::vector<std::pair<std::string, Tensor>> arrays;
  Tensor grid_images = res_u8;
  if (reference.defined()) {
    const Tensor ref_u8 = quantize(to(reference, Device::cpu()));
    const Tensor deg_u8 = quantize(to(degraded, Device::cpu()));
    grid_images = cat({ref_u8, deg_u8, res_u8}, 0);  // rows: reference | degraded | result
    arrays = {{"reference", nhwc(ref_u8)}, {"degraded", nhwc(deg_u8)}};
  }
  arrays.push_back({"result", nhwc(res_u8)});
  if (mask.defined()) arrays.push_back({"mask", nhwc(to(mask, DType::u8))});
  const Tensor g = make_grid(grid_images, res_u8.size(0));
  data::write_png((out / "grid.png").string(),
                  upscale_nearest(g, std::max<int64_t>(1, 256 / g.size(2))));
  data::write_npz((out / "edits.npz").string(), arrays);
  recipe["n"] = res_u8.size(0);
  nn::write_atomic((out / "recipe.json").string(), recipe.dump(2) + "\n");
  std::printf("%s: wrote %lld results to %s (grid.png, edits.npz, recipe.json)\n", c.task.c_str(),
              static_cast<long long>(res_u8.size(0)), out.c_str());
  return 0;
}

}  // namespace cm::runner
