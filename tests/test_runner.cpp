// The runner: configuration validation (unknown keys with suggestions, types, ranges, fields of the
// wrong mode, all problems at once), exact resume (N + resume + N steps give bit-identical weights
// to 2N steps on the CPU), loading networks back from checkpoints, and the image outputs (grids,
// quantisation, .npz).
#include <filesystem>
#include <fstream>

#include "datasets/dataset.h"
#include "datasets/png.h"
#include "datasets/zip.h"
#include "nn/safetensors.h"
#include "nn/songunet.h"
#include "runner/config.h"
#include "runner/evaluate.h"
#include "runner/images.h"
#include "runner/trainer.h"
#include "tests/helpers.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::runner;
namespace fs = std::filesystem;

namespace {

json tiny(const std::string& mode) {
  json j = test::tiny_run_config(mode, 6);
  j["network"]["dropout"] = 0.2;
  j["train"]["ema"] = {0.9, 0.5};
  return j;
}

std::string problems(const json& user) {
  try {
    resolve_config(user, "test.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

fs::path temp_dir(const std::string& name) {
  fs::path p =
      fs::temp_directory_path() / ("cm_test_runner_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Every tensor of two checkpoints is bit-identical (metadata "step" aside).
void check_same_checkpoints(const std::string& a, const std::string& b) {
  nn::SafetensorsFile fa(a), fb(b);
  REQUIRE(fa.names() == fb.names());
  for (const std::string& n : fa.names()) {
    const Tensor x = fa.get(n), y = fb.get(n);
    REQUIRE(x.shape() == y.shape());
    CHECK_MESSAGE(std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0, n,
                  " differs after resume");
  }
  for (const char* k : {"gen", "dropout", "loader_epoch", "loader_index", "emas", "target_updates"})
    CHECK_MESSAGE(fa.metadata().at(k) == fb.metadata().at(k), k);
}

// A tiny class-conditional ADM U-Net on the 8×8 digits.
json tiny_adm(const std::string& mode) {
  json j = tiny(mode);
  j["network"] = {{"preset", "adm-tiny-16"}, {"img_resolution", 8}, {"in_channels", 1},
                  {"out_channels", 1},       {"label_dim", 10},     {"attention_resolutions", {4}},
                  {"dropout", 0.2}};
  j["data"]["labels"] = true;
  return j;
}

// A tiny class-conditional DhariwalUNet (EDM's ADM) on the 8×8 digits: 32 channels at 8×8, 64
// (one attention head) at 4×4.
json tiny_dhariwal(const std::string& mode) {
  json j = tiny(mode);
  j["network"] = {{"preset", "dhariwal-tiny-16"},
                  {"img_resolution", 8},
                  {"in_channels", 1},
                  {"out_channels", 1},
                  {"label_dim", 10},
                  {"model_channels", 32},
                  {"attn_resolutions", {4}},
                  {"dropout", 0.2}};
  j["data"]["labels"] = true;
  return j;
}

void check_resume_is_exact(const std::string& mode, const json& user) {
  const RunConfig cfg = typed_config(resolve_config(user, "test.json"));
  const fs::path dir = temp_dir(mode);
  {
    Trainer straight(cfg, std::nullopt, nullptr);
    for (int i = 0; i < 6; ++i) straight.train_step();
    straight.save_checkpoint((dir / "straight.safetensors").string());
  }
  {
    Trainer first(cfg, std::nullopt, nullptr);
    for (int i = 0; i < 3; ++i) first.train_step();
    first.save_checkpoint((dir / "half.safetensors").string());
  }
  {
    Trainer resumed(cfg, (dir / "half.safetensors").string(), nullptr);
    CHECK(resumed.step() == 3);
    for (int i = 0; i < 3; ++i) resumed.train_step();
    resumed.save_checkpoint((dir / "resumed.safetensors").string());
  }
  check_same_checkpoints((dir / "straight.safetensors").string(),
                         (dir / "resumed.safetensors").string());
  fs::remove_all(dir);
}

}  // namespace

TEST_SUITE("runner") {
  TEST_CASE("a valid configuration resolves with every default filled in") {
    const json r = resolve_config(tiny("ct"), "test.json");
    CHECK(r["train"]["optimizer"] == "radam");
    CHECK(r["consistency"]["mu0"] == 0.9);
    CHECK(r["noise"]["sigma_max"] == 80.0);
    CHECK(r["device"] == "cpu");
    CHECK_FALSE(r.contains("edm"));  // the EDM section does not apply to CT
    const RunConfig c = typed_config(r);
    CHECK(c.cons.schedule.total_steps == 6);
    CHECK(c.network.songunet.model_channels == 8);
    CHECK(c.network.songunet.num_blocks == 1);
  }

  TEST_CASE("configuration errors name the file, the JSON path and the value") {
    json j = tiny("ct");
    j["train"]["lrr"] = 0.1;
    CHECK(problems(j).find("test.json: /train/lrr: unknown key (did you mean \"lr\"?)") !=
          std::string::npos);
    j = tiny("ct");
    j["train"]["lr"] = "1e-4";
    CHECK(problems(j).find("/train/lr: expected a number, got \"1e-4\" (string)") !=
          std::string::npos);
    j = tiny("ct");
    j["train"]["batch"] = 2.5;
    CHECK(problems(j).find("/train/batch: expected an integer") != std::string::npos);
    j = tiny("ct");
    j["train"]["steps"] = 0;
    CHECK(problems(j).find("/train/steps: value 0 is out of range") != std::string::npos);
    j = tiny("ct");
    j["consistency"]["teacher"] = "runs/00001";
    CHECK(problems(j).find("/consistency/teacher: does not apply to mode \"ct\" (only to cd)") !=
          std::string::npos);
    j = tiny("edm");
    j["consistency"] = {{"s1", 100}};
    CHECK(problems(j).find("/consistency: does not apply to mode \"edm\"") != std::string::npos);
    j = tiny("cd");
    CHECK(problems(j).find("/consistency/teacher: missing") != std::string::npos);
    j = tiny("ct");
    j["consistency"]["distance"] = "lpipss";
    CHECK(problems(j).find("\"lpipss\" is not one of l2, l1, pseudo_huber") != std::string::npos);
    j = tiny("ct");
    j.erase("mode");
    CHECK(problems(j).find("/mode: missing") != std::string::npos);
    j = tiny("ct");
    j["precision"] = "bf16";
    CHECK(problems(j).find("/precision: \"bf16\" needs a GPU device") != std::string::npos);
    j["precision"] = "tf32";
    CHECK(problems(j).find("/precision: \"tf32\" needs a GPU device") != std::string::npos);
    j["precision"] = "fp32";
    CHECK(problems(j).find("\"fp32\" is not one of f32, tf32, bf16, f16") != std::string::npos);
    j = tiny("ct");
    j["device"] = "gpu";
    CHECK(problems(j).find("/device: invalid device \"gpu\"") != std::string::npos);
    j = tiny("ct");
    j["network"]["preset"] = "unet";
    CHECK(problems(j).find("/network/preset: unknown network \"unet\"") != std::string::npos);
    // several problems are reported together
    j = tiny("ct");
    j["train"]["lrr"] = 1;
    j["seed"] = -1;
    j["bogus"] = true;
    const std::string all = problems(j);
    CHECK(all.find("3 problems") != std::string::npos);
    CHECK(all.find("/seed") != std::string::npos);
    CHECK(all.find("/bogus: unknown key") != std::string::npos);
  }

  TEST_CASE("every shipped configuration validates") {
    int n = 0;
    for (const auto& e : fs::directory_iterator(std::string(CM_SOURCE_DIR) + "/configs")) {
      if (e.path().extension() != ".json") continue;
      CHECK_NOTHROW(
          typed_config(resolve_config(read_json_file(e.path().string()), e.path().string())));
      ++n;
    }
    CHECK(n >= 8);
  }

  TEST_CASE("config.json holds the network whole: every field of the preset, resolved once") {
    json j = tiny("ct");
    j["network"] = {{"preset", "ddpmpp-small-28"}, {"model_channels", 16}};
    const json r = resolve_config(j, "test.json");
    const nn::SongUNetConfig p = nn::songunet_preset("ddpmpp-small-28");
    const json& n = r["network"];
    CHECK(n["preset"] == "ddpmpp-small-28");
    CHECK(n["model_channels"] == 16);  // the override
    CHECK(n["img_resolution"] == p.img_resolution);
    CHECK(n["in_channels"] == p.in_channels);
    CHECK(n["out_channels"] == p.out_channels);
    CHECK(n["channel_mult"] == json(p.channel_mult));
    CHECK(n["num_blocks"] == p.num_blocks);
    CHECK(n["attn_resolutions"] == json(p.attn_resolutions));
    CHECK(n["dropout"] == p.dropout);
    CHECK(n["embedding_type"] == p.embedding_type);
    CHECK(n["encoder_type"] == p.encoder_type);
    CHECK(n["resample_filter"] == json(p.resample_filter));
    CHECK(n["memory_format"] == p.memory_format);
    // every field of the network is written (a reader needs no preset table)
    for (const char* k : {"label_dim", "augment_dim", "channel_mult_emb", "label_dropout",
                          "channel_mult_noise", "decoder_type", "fourier_scale"})
      CHECK_MESSAGE(n.contains(k), k);
    // resolving the resolved file changes nothing, and builds the same network
    CHECK(resolve_config(r, "config.json") == r);
    const RunConfig a = typed_config(r), b = typed_config(resolve_config(j, "test.json"));
    CHECK(a.network.songunet.model_channels == b.network.songunet.model_channels);
    CHECK(a.network.songunet.channel_mult == b.network.songunet.channel_mult);
  }

  TEST_CASE(
      "an ADM preset chooses ADM's U-Net: config.json holds it whole, with 250 ln sigma labels") {
    const json r = resolve_config(tiny_adm("ct"), "test.json");
    const nn::AdmUNetConfig p = nn::adm_unet_preset("adm-tiny-16");
    const json& n = r["network"];
    CHECK(n["type"] == "adm");
    CHECK(n["noise_labels"] == "adm");
    CHECK(n["img_resolution"] == 8);  // the overrides
    CHECK(n["label_dim"] == 10);
    CHECK(n["attention_resolutions"] == json::array({4}));
    CHECK(n["model_channels"] == p.model_channels);  // the preset's values, written out
    CHECK(n["channel_mult"] == json(p.channel_mult));
    CHECK(n["num_res_blocks"] == p.num_res_blocks);
    CHECK(n["num_head_channels"] == p.num_head_channels);
    CHECK(n["use_scale_shift_norm"] == p.use_scale_shift_norm);
    CHECK(n["resblock_updown"] == p.resblock_updown);
    CHECK(n["attention_split"] == "flash");
    for (const char* k : {"num_blocks", "attn_resolutions", "embedding_type", "augment_dim"})
      CHECK_MESSAGE(!n.contains(k), k);  // no SongUNet keys
    CHECK(resolve_config(r, "config.json") == r);
    const RunConfig c = typed_config(r);
    CHECK(c.network.type == "adm");
    CHECK(c.network.noise_labels == consistency::NoiseLabels::Adm250);
    CHECK(c.network.adm.image_size == 8);
    CHECK(c.network.adm.num_classes == 10);
    Generator g(0);
    CHECK(c.network.make(g)->type_name() == "UNetModel");
    // the convention can be chosen: EDM's ln(sigma)/4 on an ADM network
    json e = tiny_adm("ct");
    e["network"]["noise_labels"] = "edm";
    CHECK(typed_config(resolve_config(e, "test.json")).network.noise_labels ==
          consistency::NoiseLabels::EdmLog4);
    // and SongUNet presets keep EDM's
    CHECK(typed_config(resolve_config(tiny("ct"), "test.json")).network.noise_labels ==
          consistency::NoiseLabels::EdmLog4);
  }

  TEST_CASE("each network family refuses the other's keys, by path") {
    json a = tiny_adm("ct");
    a["network"]["num_blocks"] = 2;
    CHECK(problems(a).find(
              "/network/num_blocks: applies only to SongUNet and DhariwalUNet networks") !=
          std::string::npos);
    json b = tiny("ct");
    b["network"]["use_scale_shift_norm"] = false;
    CHECK(problems(b).find("/network/use_scale_shift_norm: applies only to ADM networks") !=
          std::string::npos);
    json t = tiny("ct");
    t["network"]["type"] = "adm";
    CHECK(problems(t).find("/network/type: \"adm\" does not match preset") != std::string::npos);
    json u = tiny("ct");
    u["network"] = {{"preset", "adm-imagenet32"}};
    const std::string pu = problems(u);
    CHECK(pu.find("/network/preset: unknown network \"adm-imagenet32\"") != std::string::npos);
    CHECK(pu.find("adm-imagenet64") != std::string::npos);
    json w = tiny_adm("ct");
    w["network"]["model_channels"] = 48;  // GroupNorm32
    CHECK(problems(w).find("multiple of 32") != std::string::npos);
  }

  TEST_CASE("a DhariwalUNet preset chooses EDM's ADM: config.json holds it whole, keys checked") {
    const json r = resolve_config(tiny_dhariwal("edm"), "test.json");
    const nn::DhariwalUNetConfig p = nn::dhariwal_unet_preset("dhariwal-tiny-16");
    const json& n = r["network"];
    CHECK(n["type"] == "dhariwal");
    CHECK(n["noise_labels"] == "edm");  // EDMPrecond's ln(sigma)/4
    CHECK(n["preconditioning"] == "edm");
    CHECK(n["model_channels"] == 32);
    CHECK(n["channel_mult"] == json(p.channel_mult));  // the preset's values, written out
    CHECK(n["num_blocks"] == p.num_blocks);
    CHECK(n["channel_mult_emb"] == p.channel_mult_emb);
    for (const char* k : {"embedding_type", "encoder_type", "num_res_blocks", "attention_split"})
      CHECK_MESSAGE(!n.contains(k), k);  // neither SongUNet's nor openai ADM's own keys
    CHECK(resolve_config(r, "config.json") == r);
    const RunConfig c = typed_config(r);
    Generator g(0);
    CHECK(c.network.make(g)->type_name() == "DhariwalUNet");
    CHECK(c.network.label_dim() == 10);
    json a = tiny_dhariwal("ct");
    a["network"]["encoder_type"] = "skip";
    CHECK(problems(a).find("/network/encoder_type: applies only to SongUNet networks (preset "
                           "\"dhariwal-tiny-16\" is a dhariwal network)") != std::string::npos);
    json b = tiny_dhariwal("ct");
    b["network"]["num_head_channels"] = 32;
    CHECK(problems(b).find("/network/num_head_channels: applies only to ADM networks") !=
          std::string::npos);
    json d = tiny_dhariwal("ct");
    d["network"]["img_resolution"] = 7;
    CHECK(problems(d).find("img_resolution 7 cannot be halved") != std::string::npos);
  }

  TEST_CASE("an EDM teacher on a DhariwalUNet trains and resumes bit-identically") {
    check_resume_is_exact("dhariwal", tiny_dhariwal("edm"));
  }

  TEST_CASE("preconditioning vp and ve: teachers only, with their own noise labels, not trained") {
    json v = tiny("edm");
    v["network"]["preconditioning"] = "vp";
    const RunConfig c = typed_config(resolve_config(v, "test.json"));
    CHECK(c.network.preconditioning == consistency::Parameterization::Vp);
    CHECK(c.network.noise_labels == consistency::NoiseLabels::VpTime);
    CHECK(resolve_config(v, "test.json")["network"]["noise_labels"] == "vp");
    CHECK_THROWS_WITH_AS(Trainer(c, std::nullopt, nullptr),
                         doctest::Contains("/network/preconditioning: \"vp\": cm trains EDM "
                                           "teachers with EDM's preconditioning"),
                         Error);
    json ct = tiny("ct");
    ct["network"]["preconditioning"] = "ve";
    CHECK(problems(ct).find("/network/preconditioning: \"ve\" is a teacher's (mode edm)") !=
          std::string::npos);
    json mixed = tiny("edm");
    mixed["network"]["preconditioning"] = "ve";
    mixed["network"]["noise_labels"] = "edm";
    CHECK(problems(mixed).find("/network/noise_labels: \"edm\" does not go with preconditioning "
                               "\"ve\" (it fixes noise_labels \"ve\")") != std::string::npos);
    json stray = tiny("edm");
    stray["network"]["noise_labels"] = "vp";
    CHECK(problems(stray).find("noise labels vp and ve belong to preconditioning vp and ve") !=
          std::string::npos);
    json bad = tiny("edm");
    bad["network"]["preconditioning"] = "iddpm";
    CHECK(problems(bad).find("/network/preconditioning") != std::string::npos);
  }

  TEST_CASE("CD distils through a VP teacher with the teacher's own preconditioning") {
    // A teacher checkpoint relabelled as a converted VP baseline (tools/convert_edm_pkl.py writes
    // such files): the student starts from its weights as from any teacher, and its first loss
    // differs from distilling the same weights as an EDM-preconditioned teacher.
    const fs::path dir = temp_dir("cd_vp");
    const std::string edm_ckpt = (dir / "edm.safetensors").string(),
                      vp_ckpt = (dir / "vp.safetensors").string();
    {
      Trainer t(typed_config(resolve_config(tiny("edm"), "test.json")), std::nullopt, nullptr);
      t.train_step();
      t.save_checkpoint(edm_ckpt);
    }
    {
      const nn::SafetensorsFile f(edm_ckpt);
      std::map<std::string, Tensor> tensors;
      for (const std::string& n : f.names()) tensors[n] = f.get(n);
      std::map<std::string, std::string> meta = f.metadata();
      json config = json::parse(meta.at("config"));
      config["network"]["preconditioning"] = "vp";
      config["network"]["noise_labels"] = "vp";
      meta["config"] = config.dump();
      nn::save_safetensors(vp_ckpt, tensors, meta);
    }
    double loss[2];
    for (int k = 0; k < 2; ++k) {
      json j = tiny("cd");
      j["consistency"] = {
          {"teacher", k ? vp_ckpt : edm_ckpt}, {"schedule", "fixed"}, {"n", 18}, {"mu", 0.0}};
      Trainer cd(typed_config(resolve_config(j, "test.json")), std::nullopt, nullptr);
      loss[k] = cd.train_step().loss;
      CHECK(std::isfinite(loss[k]));
    }
    CHECK(loss[0] != loss[1]);
    CHECK(load_network(vp_ckpt, "ema", Device::cpu()).config.network.preconditioning ==
          consistency::Parameterization::Vp);
    fs::remove_all(dir);
  }

  TEST_CASE("a class-conditional ADM consistency model trains and resumes bit-identically") {
    check_resume_is_exact("adm", tiny_adm("ct"));
  }

  TEST_CASE("class-conditional sampling: each seed's own class, or one for all, image by seed") {
    // the classes of the seeds: uniform over the classes, a function of the seed alone
    std::vector<uint64_t> many(10000);
    for (size_t i = 0; i < many.size(); ++i) many[i] = i;
    const std::vector<int64_t> k = image_classes(many, 10, std::nullopt);
    std::vector<int64_t> count(10, 0);
    for (int64_t c : k) ++count[size_t(c)];
    for (int64_t c : count) CHECK((c > 900 && c < 1100));
    CHECK(image_classes({7, 3}, 10, std::nullopt) ==
          std::vector<int64_t>{k[7], k[3]});  // not the position in the list
    CHECK(image_classes({7, 3}, 10, 4) == std::vector<int64_t>{4, 4});

    // a tiny class-conditional ADM consistency model
    const fs::path dir = temp_dir("classes");
    const RunConfig cfg = typed_config(resolve_config(tiny_adm("ct"), "test.json"));
    {
      Trainer t(cfg, std::nullopt, nullptr);
      for (int i = 0; i < 2; ++i) t.train_step();
      t.save_checkpoint((dir / "c.safetensors").string());
    }
    const LoadedNetwork m = load_network((dir / "c.safetensors").string(), "ema", Device::cpu());
    {
      NoGradGuard ng;  // two steps leave the zero-initialised output layers near zero
      Generator g(9);
      for (auto& [n, p] : m.net->named_parameters())
        copy_(p, add(p, mul(randn(p.shape(), {}, &g), 0.1)));
    }
    Sampler one = choose_sampler(m.config, "1", "");
    const std::vector<uint64_t> seeds = {0, 1, 2, 3, 4, 5};
    const Tensor random = generate_images(m, seeds, one, Quantization::Floor, Device::cpu(), 4);
    const std::vector<int64_t> classes = image_classes(seeds, 10, std::nullopt);
    bool some_differ = false;
    for (size_t i = 0; i < seeds.size(); ++i) {
      Sampler fixed = one;
      fixed.fixed_class = classes[i];  // the seed's own class, given for all
      const Tensor f = generate_images(m, seeds, fixed, Quantization::Floor, Device::cpu(), 4);
      CHECK(max_abs_diff(select(f, 0, int64_t(i)), select(random, 0, int64_t(i))) == 0);
      fixed.fixed_class = (classes[i] + 1) % 10;  // another class: another image
      const Tensor g = generate_images(m, seeds, fixed, Quantization::Floor, Device::cpu(), 4);
      some_differ |= max_abs_diff(select(g, 0, int64_t(i)), select(random, 0, int64_t(i))) > 0;
    }
    CHECK(some_differ);
    CHECK_THROWS_WITH_AS(check_class_choice(m, 10, true),
                         doctest::Contains("--class 10: the model has 10 classes"), Error);
    check_class_choice(m, 9, true);
    const LoadedNetwork u = [&] {
      const RunConfig uc = typed_config(resolve_config(tiny("ct"), "test.json"));
      Trainer t(uc, std::nullopt, nullptr);
      t.save_checkpoint((dir / "u.safetensors").string());
      return load_network((dir / "u.safetensors").string(), "ema", Device::cpu());
    }();
    CHECK_THROWS_WITH_AS(check_class_choice(u, 1, true), doctest::Contains("unconditional"), Error);
    check_class_choice(u, std::nullopt, false);
    fs::remove_all(dir);
  }

  TEST_CASE("--set overrides reach nested fields and parse JSON values") {
    json j = tiny("ct");
    apply_overrides(j, {"train.lr=2e-4", "consistency.schedule=fixed", "network.channel_mult=[1,1]",
                        "name=x y"});
    CHECK(j["train"]["lr"] == 2e-4);
    CHECK(j["consistency"]["schedule"] == "fixed");
    CHECK(j["network"]["channel_mult"] == json::array({1, 1}));
    CHECK(j["name"] == "x y");
    CHECK_THROWS_WITH_AS(apply_overrides(j, {"train.lr"}), doctest::Contains("expected key=value"),
                         Error);
  }

  TEST_CASE("a resumed CT run is bit-identical to an uninterrupted one") {
    check_resume_is_exact("ct", tiny("ct"));
  }

  TEST_CASE(
      "a streamed data set trains as the same images in memory do, random crops and flips "
      "included, and resumes exactly") {
    // the digits as an EDM folder of PNGs, with their labels in dataset.json
    const fs::path dir = temp_dir("stream");
    const data::ImageDataset digits = data::load_dataset("digits");
    const std::vector<int64_t> labels = digits.labels.to_vector<int64_t>();
    json entries = json::array();
    for (int64_t i = 0; i < 200; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "%05lld/img%08lld.png", (long long)(i / 100), (long long)i);
      fs::create_directories((dir / "digits" / name).parent_path());
      data::write_png((dir / "digits" / name).string(), digits.images.select(0, i));
      entries.push_back({name, labels[size_t(i)]});
    }
    std::ofstream((dir / "digits/dataset.json").string()) << json{{"labels", entries}}.dump();
    json user = tiny("ct");
    user["data"] = {
        {"dataset", "folder:" + (dir / "digits").string()}, {"flip", true}, {"random_crop", true}};
    std::vector<std::string> ckpt;
    for (const char* storage : {"memory", "stream"}) {
      CAPTURE(storage);
      user["data"]["storage"] = storage;
      user["data"]["read_threads"] = 3;
      const RunConfig cfg = typed_config(resolve_config(user, "test.json"));
      Trainer t(cfg, std::nullopt, nullptr);
      CHECK(t.loader().dataset().streamed() == (std::string(storage) == "stream"));
      CHECK(t.loader().options().random_crop);
      for (int i = 0; i < 4; ++i) t.train_step();
      ckpt.push_back((dir / (std::string(storage) + ".safetensors")).string());
      t.save_checkpoint(ckpt.back());
    }
    check_same_checkpoints(ckpt[0], ckpt[1]);
    check_resume_is_exact("stream-resume", user);
    user["data"]["random_crop"] = "yes";
    CHECK_THROWS_WITH_AS(resolve_config(user, "test.json"), doctest::Contains("/data/random_crop"),
                         cm::Error);
    user["data"]["random_crop"] = true;
    user["data"]["storage"] = "disk";
    CHECK_THROWS_WITH_AS(resolve_config(user, "test.json"), doctest::Contains("/data/storage"),
                         cm::Error);
    fs::remove_all(dir);
  }

  TEST_CASE("network.attention: fused and composite attention train alike in every family") {
    // the two kernels differ by rounding only: over a few CT steps the losses and gradient norms
    // agree to float precision (the projections after attention start at zero, so early steps
    // barely see it: the layer-level check is in test_attention.cpp); a bad value is named
    for (const auto& make : {tiny, tiny_adm, tiny_dhariwal}) {
      json user = make("ct");
      CAPTURE(user["network"].dump());
      std::vector<std::vector<StepStats>> runs;
      for (const char* kernel : {"composite", "fused"}) {
        user["network"]["attention"] = kernel;
        const RunConfig cfg = typed_config(resolve_config(user, "test.json"));
        // the field reaches the network's config (test_attention.cpp: and its layers)
        const NetworkConfig& n = cfg.network;
        CHECK((n.songunet.attention == kernel || n.adm.attention == kernel ||
               n.dhariwal.attention == kernel));
        Trainer t(cfg, std::nullopt, nullptr);
        runs.emplace_back();
        for (int i = 0; i < 3; ++i) runs.back().push_back(t.train_step());
      }
      for (size_t i = 0; i < runs[0].size(); ++i) {
        CAPTURE(i);
        CHECK(runs[1][i].loss == doctest::Approx(runs[0][i].loss).epsilon(1e-4));
        CHECK(runs[1][i].grad_norm == doctest::Approx(runs[0][i].grad_norm).epsilon(1e-4));
      }
      user["network"]["attention"] = "flash";
      CHECK_THROWS_WITH_AS(resolve_config(user, "test.json"),
                           doctest::Contains("/network/attention"), cm::Error);
    }
  }

  TEST_CASE("a CT run with activation recomputation on writes the checkpoint of one with it off") {
    // dropout on, so the online pass's masks are redrawn (not kept) and the target's replayed by
    // drawing again; the checkpoint holds the weights, both EMAs and the optimizer state
    const fs::path dir = temp_dir("recompute");
    json user = tiny("ct");
    user["network"]["dropout"] = 0.2;
    std::vector<std::string> ckpt;
    for (const char* recompute : {"off", "on"}) {
      CAPTURE(recompute);
      user["network"]["recompute"] = recompute;
      const RunConfig cfg = typed_config(resolve_config(user, "test.json"));
      Trainer t(cfg, std::nullopt, nullptr);
      for (int i = 0; i < 4; ++i) t.train_step();
      ckpt.push_back((dir / (std::string(recompute) + ".safetensors")).string());
      t.save_checkpoint(ckpt.back());
    }
    check_same_checkpoints(ckpt[0], ckpt[1]);
    user["network"]["recompute"] = "always";
    CHECK_THROWS_WITH_AS(resolve_config(user, "test.json"), doctest::Contains("/network/recompute"),
                         cm::Error);
    fs::remove_all(dir);
  }

  TEST_CASE("a resumed EDM teacher run is bit-identical to an uninterrupted one") {
    check_resume_is_exact("edm", tiny("edm"));
  }

  TEST_CASE("CD distils from a teacher checkpoint and starts from its weights") {
    const fs::path dir = temp_dir("cd");
    const RunConfig teacher_cfg = typed_config(resolve_config(tiny("edm"), "test.json"));
    const std::string ckpt = (dir / "teacher.safetensors").string();
    {
      Trainer t(teacher_cfg, std::nullopt, nullptr);
      t.train_step();
      t.save_checkpoint(ckpt);
    }
    json j = tiny("cd");
    j["consistency"] = {{"teacher", ckpt}, {"schedule", "fixed"}, {"n", 18}, {"mu", 0.0}};
    const RunConfig cfg = typed_config(resolve_config(j, "test.json"));
    Trainer cd(cfg, std::nullopt, nullptr);
    const LoadedNetwork teacher = load_network(ckpt, "ema", Device::cpu());
    // the student starts from the teacher's first eval EMA
    for (auto& [n, p] : cd.online().named_parameters()) {
      Tensor tp;
      for (auto& [m, q] : teacher.net->named_parameters())
        if (m == n) tp = q;
      CHECK_MESSAGE(max_abs_diff(p, tp) == 0, n);
    }
    const StepStats s = cd.train_step();
    CHECK(std::isfinite(s.loss));
    CHECK(s.n == 18);
    CHECK_THROWS_WITH_AS(load_network(ckpt, "ema:0.123", Device::cpu()),
                         doctest::Contains("no eval EMA \"0.123\""), Error);
    fs::remove_all(dir);
  }

  TEST_CASE("every network copy in a checkpoint is a whole state dict, buffers included") {
    const fs::path dir = temp_dir("state_dicts");
    json j = tiny("ct");
    j["consistency"] = {{"schedule", "fixed"}, {"n", 18}, {"mu", 0.9}};  // a separate target
    const RunConfig cfg = typed_config(resolve_config(j, "test.json"));
    const std::string ckpt = (dir / "ct.safetensors").string();
    {
      Trainer t(cfg, std::nullopt, nullptr);
      t.train_step();
      t.save_checkpoint(ckpt);
    }
    Generator g(0);
    nn::SongUNet net(cfg.network.songunet, g);
    REQUIRE(!net.named_buffers().empty());  // the resampling filters: what the copies missed
    const nn::SafetensorsFile f(ckpt);
    for (const std::string prefix : {"model.", "target.", "ema0."}) {
      CAPTURE(prefix);
      std::map<std::string, Tensor> sd;
      for (const std::string& n : f.names())
        if (n.rfind(prefix, 0) == 0) sd[n.substr(prefix.size())] = f.get(n);
      CHECK(sd.size() == net.state_dict().size());
      CHECK_NOTHROW(net.load_state_dict(sd, true));  // strict: no key missing, none extra
    }
    // and the copies' buffers are the network's
    for (const auto& [n, b] : net.named_buffers())
      CHECK(max_abs_diff(f.get("ema0." + n), f.get("model." + n)) == 0);
    fs::remove_all(dir);
  }

  TEST_CASE("image outputs: quantisation, grids and .npz") {
    const Tensor x = from_vector<float>({-1.0f, -0.999f, 0.0f, 0.5f, 1.0f, 2.0f}, {1, 1, 2, 3});
    CHECK(quantize(x, Quantization::Floor).to_vector<uint8_t>() ==
          std::vector<uint8_t>{0, 0, 127, 191, 255, 255});
    CHECK(quantize(x, Quantization::Round).to_vector<uint8_t>() ==
          std::vector<uint8_t>{0, 0, 128, 191, 255, 255});
    const Tensor imgs =
        to(arange(5 * 1 * 2 * 2, {.dtype = DType::i64}).reshape({5, 1, 2, 2}), DType::u8);
    const Tensor grid = make_grid(imgs, 3, 1, 9);
    CHECK(grid.shape() == Shape{1, 7, 10});  // 2 rows of 3: 2·(2+1)+1 by 3·(2+1)+1
    auto px = [&](int64_t r, int64_t c) {
      return select(select(select(grid, 0, 0), 0, r), 0, c).item<uint8_t>();
    };
    CHECK(px(0, 0) == 9);   // padding
    CHECK(px(1, 1) == 0);   // image 0, pixel (0, 0)
    CHECK(px(2, 5) == 7);   // image 1, pixel (1, 1)
    CHECK(px(4, 1) == 12);  // image 3, pixel (0, 0)
    CHECK(px(4, 7) == 9);   // no image 5: padding
    const fs::path dir = temp_dir("npz");
    const std::string path = (dir / "s.npz").string();
    write_npz(path, imgs, from_vector<int64_t>({0, 1, 2, 3, 4}, {5}));
    data::ZipReader zip(path);
    const std::vector<uint8_t> arr = zip.read("arr_0.npy");
    const data::NpyHeader h = data::parse_npy_header(arr.data(), arr.size(), "arr_0.npy");
    CHECK(h.descr == "|u1");
    CHECK(h.shape == Shape{5, 2, 2, 1});  // NHWC
    CHECK(arr[h.data_offset + 5] == 5);
    fs::remove_all(dir);
  }
}
