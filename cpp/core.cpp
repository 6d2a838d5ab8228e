// polyget C++ core: see core.h.
#include "core.h"
#include "ops/et_messages.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <ATen/Version.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <tuple>

namespace polyget {

namespace {

bool file_readable(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

bool ends_with(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// a NAME.pt next to NAME.jit.pt: suggest the right file
std::string jit_sibling_hint(const std::string &path) {
  if (ends_with(path, ".jit.pt") || !ends_with(path, ".pt")) return "";
  std::string sibling = path.substr(0, path.size() - 3) + ".jit.pt";
  if (file_readable(sibling)) return " (" + sibling + " exists: use that file)";
  return "";
}

std::string first_line(const std::string &s) {
  auto pos = s.find('\n');
  return pos == std::string::npos ? s : s.substr(0, pos);
}

// What a file that is not polyget TorchScript is, for the error message ("" if it looks like
// TorchScript). torch.save() pickles (the ML-IAP NAME.pt) are zip archives with data.pkl and no
// constants.pkl / code/.
std::string classify_non_torchscript(const std::string &path) {
  {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (f.good() && f.tellg() == 0)
      return "empty (0 bytes: an interrupted copy or export?), not a TorchScript model";
  }
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord("constants.pkl")) return "";
    if (reader.hasRecord("data.pkl"))
      return "a torch.save() pickle (such as the ML-IAP file NAME.pt for pair_style mliap "
             "unified), not a TorchScript model";
    return "a PyTorch archive without a TorchScript model";
  } catch (const std::exception &) {
    return "not a PyTorch/TorchScript file";
  }
}

int64_t grow(int64_t need) { return std::max<int64_t>(16, need + need / 4); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// metadata records (contract.h parses them)
// ---------------------------------------------------------------------------------------------

std::map<std::string, std::string> read_records(const std::string &path) {
  std::map<std::string, std::string> out;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string pre = "extra/";
    for (const auto &name : reader.getAllRecords()) {
      if (name.compare(0, pre.size(), pre) != 0) continue;
      at::DataPtr data;
      size_t size = 0;
      std::tie(data, size) = reader.getRecord(name);
      out[name.substr(pre.size())] = std::string(static_cast<const char *>(data.get()), size);
    }
  } catch (const std::exception &e) {
    throw ModelError("'" + path + "' is not a PyTorch/TorchScript file (" + first_line(e.what()) +
                     "); expected NAME.jit.pt written by python/export.py");
  }
  return out;
}

Metadata read_metadata(const std::string &path) {
  if (!file_readable(path))
    throw ModelError("cannot open model file '" + path +
                     "': no such file or not readable (expected NAME.jit.pt written by "
                     "python/export.py)");
  const std::string what = classify_non_torchscript(path);
  if (!what.empty())
    throw ModelError("'" + path + "' is " + what + ". pair_style polyget / polyget._core need "
                     "NAME.jit.pt written by python/export.py" + jit_sibling_hint(path));
  return parse_records(read_records(path), path);
}

// ---------------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------------

torch::Device choose_device(const std::string &request, int local_rank) {
  const bool built_with_cuda = at::globalContext().hasCUDA();
  const bool cuda_ok = built_with_cuda && torch::cuda::is_available();
  const int ngpu = cuda_ok ? static_cast<int>(torch::cuda::device_count()) : 0;
  auto by_rank = [&]() {
    int idx = gpu_for_rank(local_rank, ngpu);
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(idx));
  };

  if (request == "auto" || request.empty()) return (ngpu > 0) ? by_rank() : torch::Device(torch::kCPU);
  if (request == "cpu") return torch::Device(torch::kCPU);
  if (request == "cuda" || request.rfind("cuda:", 0) == 0) {
    if (!built_with_cuda)
      throw ModelError("device " + request + " requested, but this polyget was built against a "
                       "CPU-only libtorch; rebuild scripts/build_native.sh with a CUDA torch, or "
                       "use device cpu");
    if (ngpu == 0)
      throw ModelError("device " + request + " requested, but no CUDA GPU is visible "
                       "(check CUDA_VISIBLE_DEVICES and the driver), or use device cpu");
    if (request == "cuda") return by_rank();
    int idx = -1;
    try {
      idx = std::stoi(request.substr(5));
    } catch (...) {
    }
    if (idx < 0 || idx >= ngpu)
      throw ModelError("device " + request + ": expected cuda:N with 0 <= N < " +
                       std::to_string(ngpu) + " (GPUs visible)");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(idx));
  }
  throw ModelError("unknown device '" + request + "': expected auto, cpu, cuda or cuda:N");
}

// ---------------------------------------------------------------------------------------------
// model
// ---------------------------------------------------------------------------------------------

Model::Model(const std::string &path, const std::string &device, int local_rank)
    : path_(path), device_(torch::kCPU), dtype_(torch::kFloat64) {
  const auto t_start = std::chrono::steady_clock::now();
  device_ = choose_device(device, local_rank);

  meta_ = read_metadata(path);
  try {
    module_ = torch::jit::load(path, torch::Device(torch::kCPU));
  } catch (const std::exception &e) {
    throw ModelError("'" + path + "' is not a TorchScript file (" + first_line(e.what()) +
                     "). pair_style polyget / polyget._core need NAME.jit.pt written by "
                     "python/export.py; the ML-IAP pickle NAME.pt is for pair_style mliap "
                     "unified" + jit_sibling_hint(path));
  }
  dtype_ = meta_.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;

  // the TorchScript attributes, when present, must agree with the metadata
  if (module_.hasattr("cutoff")) {
    auto c = module_.attr("cutoff");
    if (c.isDouble() && std::abs(c.toDouble() - meta_.cutoff) > 1e-12 * std::max(1.0, meta_.cutoff))
      throw ModelError(path + ": model.cutoff = " + std::to_string(c.toDouble()) +
                       " but metadata cutoff = " + std::to_string(meta_.cutoff) + "; " +
                       kExportHint);
  }
  if (module_.hasattr("num_layers")) {
    auto n = module_.attr("num_layers");
    if (n.isInt() && n.toInt() != meta_.num_layers)
      throw ModelError(path + ": model.num_layers = " + std::to_string(n.toInt()) +
                       " but metadata num_layers = " + std::to_string(meta_.num_layers) +
                       "; " + kExportHint);
  }
  if (module_.hasattr("receptive_hops")) {
    auto n = module_.attr("receptive_hops");
    if (n.isInt() && n.toInt() != meta_.receptive_hops)
      throw ModelError(path + ": model.receptive_hops = " + std::to_string(n.toInt()) +
                       " but metadata receptive_hops = " + std::to_string(meta_.receptive_hops) +
                       "; " + kExportHint);
  }
  for (const auto &p : module_.parameters()) {
    if (p.is_floating_point() && p.scalar_type() != dtype_)
      throw ModelError(path + ": metadata says dtype " + meta_.dtype +
                       " but the model's parameters are " + std::string(c10::toString(p.scalar_type())) +
                       "; " + kExportHint);
  }

  if (meta_.per_layer_exchange()) {
    for (const char *name : {"edge_features", "embed", "interact", "readout"})
      if (!module_.find_method(name))
        throw ModelError(path + ": the metadata says per-layer exchange (num_exchanges) but the "
                         "TorchScript model has no method " + name + "; " + kExportHint);
    if (module_.hasattr("num_exchanges")) {
      auto n = module_.attr("num_exchanges");
      if (n.isInt() && n.toInt() != meta_.num_exchanges)
        throw ModelError(path + ": model.num_exchanges = " + std::to_string(n.toInt()) +
                         " but metadata num_exchanges = " + std::to_string(meta_.num_exchanges) +
                         "; " + kExportHint);
    }
    halo_methods_ = true;
  }

  module_.eval();
  for (auto p : module_.parameters()) p.requires_grad_(false);
  try {
    module_.to(device_);
  } catch (const std::exception &e) {
    throw ModelError("cannot move model '" + path + "' to " + device_.str() + ": " +
                     first_line(e.what()));
  }

  const char *dbg = std::getenv("POLYGET_DEBUG");
  debug_ = dbg && std::string(dbg) != "0" && std::string(dbg) != "";
  const char *dump = std::getenv("POLYGET_DEBUG_DUMP");
  if (dump) dump_prefix_ = dump;
  // The TorchScript graph executor's optimisations (profiling runs, then autodiff subgraphs)
  // make this model slower, not faster (bench/README.md), and cost several slow first steps:
  // off unless POLYGET_JIT_OPTIMIZE=1. The setting is global to the process.
  const char *opt = std::getenv("POLYGET_JIT_OPTIMIZE");
  torch::jit::setGraphExecutorOptimize(opt && std::string(opt) == "1");

  load_aoti();
  warm_up();
  load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (debug_)
    std::fprintf(stderr, "polyget: loaded %s in %.2f s (%s)\n", path_.c_str(), load_seconds_,
                 aoti_status_.c_str());
}

namespace {
std::string dirname_of(const std::string &path) {
  auto pos = path.find_last_of('/');
  return pos == std::string::npos ? std::string(".") : path.substr(0, pos);
}
}  // namespace

void Model::load_aoti() {
  aoti_.reset();
  aoti_pkgs_.clear();
  aoti_for_threads_ = -1;
  aoti_base_status_.clear();
  const char *env = std::getenv("POLYGET_AOTI");
  if (env && std::string(env) == "0") {
    aoti_status_ = aoti_base_status_ = "TorchScript (POLYGET_AOTI=0)";
    return;
  }
  if (meta_.aoti_package.empty()) {
    aoti_status_ = aoti_base_status_ = "TorchScript (no AOTInductor package in the metadata)";
    return;
  }
  // aoti_package: one file name or several, comma-separated (one per thread count)
  std::vector<std::string> names;
  {
    std::stringstream ss(meta_.aoti_package);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto b = item.find_first_not_of(" \t");
      const auto e = item.find_last_not_of(" \t");
      if (b != std::string::npos) names.push_back(item.substr(b, e - b + 1));
    }
  }
  std::vector<std::string> rejected;
  for (std::string pkg : names) {
    if (pkg[0] != '/') pkg = dirname_of(path_) + "/" + pkg;
    auto skip = [&](const std::string &why) {
      rejected.push_back(pkg + " not used: " + why);
      std::fprintf(stderr, "polyget: %s: AOTInductor package %s not used: %s\n", path_.c_str(),
                   pkg.c_str(), why.c_str());
    };
    if (!file_readable(pkg)) { skip("file not found; re-export to write it"); continue; }
    std::unordered_map<std::string, std::string> pm;
    try {
      pm = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(pkg, "model");
    } catch (const std::exception &e) {
      skip(std::string("unreadable package: ") + first_line(e.what()));
      continue;
    }
    auto get = [&](const char *k) { auto it = pm.find(k); return it == pm.end() ? std::string() : it->second; };
    // format 2: the edges in the mirrored layout (polyget.edge_layout; format-1 runners, which
    // would feed them plain edge lists, refuse it)
    const std::string fmt = get("polyget.format_version");
    if (get("polyget.format") != "polyget-aoti" || (fmt != "1" && fmt != "2")) {
      skip("not a polyget AOTInductor package of format 1 or 2");
      continue;
    }
    const bool mirrored = get("polyget.edge_layout") == "mirrored";
    if (mirrored != (fmt == "2")) {
      skip("edge layout '" + get("polyget.edge_layout") + "' in a package of format " + fmt);
      continue;
    }
    if (meta_.fingerprint.empty() || get("polyget.fingerprint") != meta_.fingerprint) {
      skip("its weights fingerprint differs from this TorchScript file's (stale package)");
      continue;
    }
    if (get("polyget.dtype") != meta_.dtype) { skip("dtype " + get("polyget.dtype")); continue; }
    const std::string pdev = get("polyget.device");
    if ((pdev == "cuda") != device_.is_cuda()) {
      skip("compiled for " + pdev + ", running on " + device_.str());
      continue;
    }
    int threads = 0;
    if (pdev == "cpu") {
      // a package compiled for AVX-512 must not run where only AVX2 is (illegal instruction)
      const std::string isa = get("polyget.isa");
      std::string cap = at::get_cpu_capability();
      std::transform(cap.begin(), cap.end(), cap.begin(), ::tolower);
      if (isa.rfind("avx512", 0) == 0 && cap.rfind("avx512", 0) != 0) {
        skip("compiled for " + isa + ", this CPU (or ATEN_CPU_CAPABILITY) offers " + cap);
        continue;
      }
      const std::string t = get("polyget.threads");
      if (!t.empty() && t != "dynamic") {
        try {
          threads = std::stoi(t);
        } catch (const std::exception &) {
          skip("unreadable polyget.threads '" + t + "'");
          continue;
        }
      }
    }
    // a package of edges in parts (LeanEnergyForces) takes edge counts that are a multiple of
    // polyget.edge_multiple: run_aoti pads with edges longer than the cutoff (zero messages)
    int64_t multiple = 1;
    double pad_length = 0.0;
    try {
      if (!get("polyget.edge_multiple").empty()) multiple = std::stoll(get("polyget.edge_multiple"));
      if (!get("polyget.pad_length").empty()) pad_length = std::stod(get("polyget.pad_length"));
    } catch (const std::exception &) {
      skip("unreadable polyget.edge_multiple / polyget.pad_length");
      continue;
    }
    if (multiple < 1 || (multiple > 1 && !(pad_length > meta_.cutoff))) {
      skip("polyget.edge_multiple " + std::to_string(multiple) + " needs a polyget.pad_length "
           "beyond the cutoff; re-export the model");
      continue;
    }
    // packages of ET models call polyget::et_messages[_backward] (cpp/ops, linked here)
    const std::string fused = get("polyget.fused_ops");
    if (!fused.empty() && fused != "0") {
      int version = -1;
      try {
        version = std::stoi(fused);
      } catch (const std::exception &) {
      }
      if (version < polyget_ops_abi_oldest() || version > polyget_ops_abi_version()) {
        skip("compiled against polyget operators version " + fused + ", this build runs " +
             std::to_string(polyget_ops_abi_oldest()) + ".." +
             std::to_string(polyget_ops_abi_version()) + "; re-export the model");
        continue;
      }
    }
    if (mirrored && (multiple < 2 || multiple % 2)) {
      skip("mirrored edges need an even polyget.edge_multiple; re-export the model");
      continue;
    }
    aoti_pkgs_.push_back(AotiPackage{pkg, threads, nullptr, multiple, pad_length, mirrored});
  }
  if (aoti_pkgs_.empty()) {
    std::string why;
    for (const auto &r : rejected) why += (why.empty() ? "" : "; ") + r;
    aoti_status_ = aoti_base_status_ = "TorchScript (" + why + ")";
    return;
  }
  select_aoti();
}

std::vector<int> Model::aoti_thread_counts() const {
  std::vector<int> out;
  for (const auto &p : aoti_pkgs_) out.push_back(p.threads);
  return out;
}

// The package compiled for the current intra-op thread count (a package compiled for N threads
// runs its parallel loops on N threads whatever the caller set, and its kernels were tuned for
// N): loaded on first use, re-selected whenever the count changes.
void Model::select_aoti() {
  if (aoti_pkgs_.empty()) return;
  const int now = device_.is_cuda() ? 0 : at::get_num_threads();
  if (now == aoti_for_threads_) return;
  aoti_for_threads_ = now;
  aoti_.reset();
  AotiPackage *pick = nullptr;
  for (auto &p : aoti_pkgs_)
    if (p.threads == now) pick = &p;
  if (!pick)
    for (auto &p : aoti_pkgs_)
      if (p.threads == 0) pick = &p;
  if (!pick) {
    std::string have;
    for (const auto &p : aoti_pkgs_) have += (have.empty() ? "" : ", ") + std::to_string(p.threads);
    aoti_status_ = "TorchScript (AOTInductor packages are compiled for " + have +
                   " thread(s), this run uses " + std::to_string(now) +
                   "; export with --aoti-threads " + std::to_string(now) + " to add one)";
    std::fprintf(stderr, "polyget: %s: %s\n", path_.c_str(), aoti_status_.c_str());
    return;
  }
  if (!pick->loader) {
    try {
      pick->loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(
          pick->path, "model", /*run_single_threaded=*/false, /*num_runners=*/1,
          device_.is_cuda() ? device_.index() : static_cast<c10::DeviceIndex>(-1));
    } catch (const std::exception &e) {
      std::string why = first_line(e.what());
      if (why.find("polyget::") != std::string::npos)  // an operator of cpp/ops not registered
        why += " (the package calls polyget's fused operators, libpolyget_ops.so: rebuild the "
               "plugin and polyget._core together with `make setup-native`, or re-export with "
               "--no-fused-ops)";
      aoti_status_ = "TorchScript (" + pick->path + " not used: cannot load: " + why + ")";
      std::fprintf(stderr, "polyget: %s: %s\n", path_.c_str(), aoti_status_.c_str());
      aoti_pkgs_.erase(aoti_pkgs_.begin() + (pick - aoti_pkgs_.data()));  // never tried again
      return;
    }
  }
  aoti_ = pick->loader;
  aoti_edge_multiple_ = pick->edge_multiple;
  aoti_pad_length_ = pick->pad_length;
  aoti_mirrored_ = pick->mirrored;
  aoti_status_ = "AOTInductor " + pick->path +
                 (pick->threads > 0 ? " (" + std::to_string(pick->threads) + " thread(s))" : "");
}

// One evaluation on a small synthetic graph at load time, so that one-time costs (allocator
// pools, lazy initialisation, kernel loading) are not paid by the first MD steps.
void Model::warm_up() {
  const char *env = std::getenv("POLYGET_WARMUP");
  if (env && std::string(env) == "0") return;
  const int64_t n = 8;
  std::vector<int64_t> species(n), ei, ej;
  std::vector<double> vec;
  const int64_t nel = static_cast<int64_t>(meta_.elements.size());
  for (int64_t a = 0; a < n; ++a) species[a] = a % nel;
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) {
      if (a == b) continue;
      ei.push_back(a);
      ej.push_back(b);
      // atoms on a line 1.1 A apart, within any sensible cutoff for neighbours
      const double d = 1.1 * static_cast<double>(b - a);
      if (std::abs(d) >= meta_.cutoff) { ei.pop_back(); ej.pop_back(); continue; }
      vec.insert(vec.end(), {d, 0.1 * static_cast<double>((a + b) % 3), 0.0});
    }
  const int64_t saved_calls = ncalls_;
  compute(n, species.data(), static_cast<int64_t>(ei.size()), ei.data(), ej.data(), vec.data(), n, true);
  ncalls_ = saved_calls;
}

// The edges in the mirrored layout of a package with polyget.edge_layout mirrored (the same
// rules as python/polyget/compile.py mirror_edges): two halves of R rows, R a multiple of
// edge_multiple / 2; edge R + r is the reverse of edge r, or a padding edge (atom 0 to itself
// at pad_length, zero messages). Edges (i, j, v) and (j, i, -v) pair when that atom pair occurs
// once in each direction; every other edge (to a ghost atom, periodic self-images, several
// images of a pair) keeps a row of its own facing a padding edge, which is always correct.
// Fills mir_index_ ([2, 2R]), mir_vec_ ([2R, 3]) and mir_slot_ (new position of each input
// edge); returns 2R. Cost: one pass over each atom's edges per edge (the LAMMPS full list).
int64_t Model::mirror_edges(int64_t natoms, int64_t nedges, const int64_t *edge_i,
                            const int64_t *edge_j, const double *edge_vec) {
  mir_start_.assign(natoms + 1, 0);
  for (int64_t k = 0; k < nedges; ++k) ++mir_start_[edge_i[k] + 1];
  for (int64_t a = 0; a < natoms; ++a) mir_start_[a + 1] += mir_start_[a];
  mir_by_i_.resize(nedges);
  {
    std::vector<int64_t> &cur = mir_slot_;  // scratch here, written below
    cur.assign(mir_start_.begin(), mir_start_.end() - 1);
    for (int64_t k = 0; k < nedges; ++k) mir_by_i_[cur[edge_i[k]]++] = k;
  }
  mir_partner_.assign(nedges, -1);
  int64_t npairs = 0;
  for (int64_t k = 0; k < nedges; ++k) {
    const int64_t i = edge_i[k], j = edge_j[k];
    if (i >= j) continue;
    int64_t same = 0, rev = -1, nrev = 0;
    for (int64_t m = mir_start_[i]; m < mir_start_[i + 1]; ++m) same += edge_j[mir_by_i_[m]] == j;
    for (int64_t m = mir_start_[j]; m < mir_start_[j + 1]; ++m)
      if (edge_j[mir_by_i_[m]] == i) { rev = mir_by_i_[m]; ++nrev; }
    if (same != 1 || nrev != 1) continue;
    const double *v = edge_vec + 3 * k, *w = edge_vec + 3 * rev;
    const double big = std::max({std::abs(v[0]), std::abs(v[1]), std::abs(v[2])});
    const double off = std::max({std::abs(v[0] + w[0]), std::abs(v[1] + w[1]), std::abs(v[2] + w[2])});
    if (!(off <= 1e-9 * big)) continue;
    mir_partner_[k] = rev;
    mir_partner_[rev] = k;
    ++npairs;
  }
  const int64_t half_mult = std::max<int64_t>(1, aoti_edge_multiple_ / 2);
  const int64_t used = nedges - npairs;  // rows: one per pair, one per unpaired edge
  const int64_t rows = std::max(half_mult, ((used + half_mult - 1) / half_mult) * half_mult);
  mir_slot_.assign(nedges, -1);
  int64_t lead = 0;
  for (int64_t k = 0; k < nedges; ++k)
    if (mir_partner_[k] >= 0 && edge_i[k] < edge_j[k]) {
      mir_slot_[k] = lead;
      mir_slot_[mir_partner_[k]] = rows + lead;
      ++lead;
    }
  int64_t next = lead;
  for (int64_t k = 0; k < nedges; ++k)
    if (mir_partner_[k] < 0) mir_slot_[k] = next++;
  const int64_t total = 2 * rows;
  mir_index_.assign(2 * total, 0);
  mir_vec_.assign(3 * total, 0.0);
  for (int64_t r = 0; r < total; ++r) mir_vec_[3 * r] = aoti_pad_length_;
  for (int64_t k = 0; k < nedges; ++k) {
    const int64_t s = mir_slot_[k];
    mir_index_[s] = edge_i[k];
    mir_index_[total + s] = edge_j[k];
    for (int d = 0; d < 3; ++d) mir_vec_[3 * s + d] = edge_vec[3 * k + d];
  }
  return total;
}

bool Model::run_aoti(int64_t natoms, int64_t nedges, int64_t nlocal, const torch::Tensor &sp,
                     const torch::Tensor &ei, const torch::Tensor &ev, const int64_t *edge_i,
                     const int64_t *edge_j, const double *edge_vec) {
  auto *loader = static_cast<torch::inductor::AOTIModelPackageLoader *>(aoti_.get());
  torch::Tensor w = weight_buf_.narrow(0, 0, natoms);
  w.narrow(0, 0, nlocal).fill_(1.0);
  if (natoms > nlocal) w.narrow(0, nlocal, natoms - nlocal).zero_();
  std::vector<at::Tensor> out;
  auto cpu_double = torch::TensorOptions().dtype(torch::kFloat64);
  if (aoti_mirrored_) {
    const int64_t total = mirror_edges(natoms, nedges, edge_i, edge_j, edge_vec);
    auto cpu_long = torch::TensorOptions().dtype(torch::kInt64);
    torch::Tensor mei = torch::from_blob(mir_index_.data(), {2, total}, cpu_long).to(device_);
    torch::Tensor mev = torch::from_blob(mir_vec_.data(), {total, 3}, cpu_double).to(device_, dtype_);
    {
      torch::NoGradGuard no_grad;
      out = loader->run({sp, mei, mev, w});
    }
    if (out.size() != 2 || out[0].dim() != 1 || out[0].size(0) != natoms || out[1].dim() != 2 ||
        out[1].size(0) != total)
      throw ModelError(path_ + ": the AOTInductor package returned unexpected outputs; "
                       "re-export the model, or set POLYGET_AOTI=0 to run the TorchScript file");
    torch::from_blob(atom_energy_.data(), {natoms}, cpu_double).copy_(out[0]);
    mir_fij_.resize(3 * total);
    torch::from_blob(mir_fij_.data(), {total, 3}, cpu_double).copy_(out[1]);
    for (int64_t k = 0; k < nedges; ++k)
      for (int d = 0; d < 3; ++d) fij_[3 * k + d] = mir_fij_[3 * mir_slot_[k] + d];
    for (int64_t a = 0; a < nlocal; ++a) energy_ += atom_energy_[a];
    return true;
  }
  // pad the edges to the package's multiple: atom 0 to itself at pad_length (> cutoff), where
  // every message is exactly zero; their rows of fij are dropped below
  const int64_t m = aoti_edge_multiple_;
  const int64_t padded = m > 1 ? ((nedges + m - 1) / m) * m : nedges;
  torch::Tensor eip = ei, evp = ev;
  if (padded != nedges) {
    eip = torch::zeros({2, padded}, ei.options());
    eip.narrow(1, 0, nedges).copy_(ei);
    evp = torch::zeros({padded, 3}, ev.options());
    evp.narrow(0, 0, nedges).copy_(ev);
    evp.narrow(0, nedges, padded - nedges).select(1, 0).fill_(aoti_pad_length_);
  }
  {
    torch::NoGradGuard no_grad;
    out = loader->run({sp, eip.contiguous(), evp.contiguous(), w});
  }
  if (out.size() == 2 && out[1].dim() == 2 && out[1].size(0) == padded && padded != nedges)
    out[1] = out[1].narrow(0, 0, nedges);
  if (out.size() != 2 || out[0].dim() != 1 || out[0].size(0) != natoms || out[1].dim() != 2 ||
      out[1].size(0) != nedges)
    throw ModelError(path_ + ": the AOTInductor package returned unexpected outputs; re-export the "
                     "model, or set POLYGET_AOTI=0 to run the TorchScript file");
  torch::from_blob(atom_energy_.data(), {natoms}, cpu_double).copy_(out[0]);
  torch::from_blob(fij_.data(), {nedges, 3}, cpu_double).copy_(out[1]);
  for (int64_t a = 0; a < nlocal; ++a) energy_ += atom_energy_[a];
  return true;
}

void Model::ensure_capacity(int64_t natoms, int64_t nedges) {
  auto long_opts = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  if (natoms > cap_atoms_ || !species_buf_.defined()) {
    cap_atoms_ = grow(natoms);
    species_buf_ = torch::empty({cap_atoms_}, long_opts);
    weight_buf_ = torch::empty({cap_atoms_}, torch::TensorOptions().dtype(dtype_).device(device_));
    atom_energy_.assign(cap_atoms_, 0.0);
    ++num_allocations_;
  }
  if (nedges > cap_edges_ || !edge_vec_buf_.defined()) {
    cap_edges_ = grow(nedges);
    edge_index_buf_ = torch::empty({2 * cap_edges_}, long_opts);
    edge_vec_buf_ = torch::empty({cap_edges_, 3}, torch::TensorOptions().dtype(dtype_).device(device_));
    fij_.assign(3 * cap_edges_, 0.0);
    ++num_allocations_;
  }
}

void Model::check_inputs(int64_t natoms, const int64_t *species, int64_t nedges,
                         const int64_t *edge_i, const int64_t *edge_j, const double *edge_vec,
                         int64_t nlocal) const {
  if (natoms < 0 || nedges < 0)
    throw ModelError("negative atom or edge count");
  if (nlocal < 0 || nlocal > natoms)
    throw ModelError("nlocal = " + std::to_string(nlocal) + " must be between 0 and the number of "
                     "atoms (" + std::to_string(natoms) + ")");
  const int64_t nel = static_cast<int64_t>(meta_.elements.size());
  for (int64_t a = 0; a < natoms; ++a)
    if (species[a] < 0 || species[a] >= nel)
      throw ModelError("species[" + std::to_string(a) + "] = " + std::to_string(species[a]) +
                       " is not an element index of this model (0.." + std::to_string(nel - 1) +
                       " for " + meta_.elements_string() + ")");
  for (int64_t k = 0; k < nedges; ++k) {
    if (edge_i[k] < 0 || edge_i[k] >= natoms || edge_j[k] < 0 || edge_j[k] >= natoms)
      throw ModelError("edge " + std::to_string(k) + " (" + std::to_string(edge_i[k]) + ", " +
                       std::to_string(edge_j[k]) + ") refers to an atom outside 0.." +
                       std::to_string(natoms - 1));
    // i == j is a periodic self-image (allowed); a zero-length edge is not
    const double *v = edge_vec + 3 * k;
    if (v[0] * v[0] + v[1] * v[1] + v[2] * v[2] < 1e-20)
      throw ModelError("edge " + std::to_string(k) + " (" + std::to_string(edge_i[k]) + ", " +
                       std::to_string(edge_j[k]) + ") has zero length: overlapping atoms, or a "
                       "self pair i == j without a periodic shift (the edge list must not "
                       "contain those)");
  }
}

void Model::compute(int64_t natoms, const int64_t *species, int64_t nedges, const int64_t *edge_i,
                    const int64_t *edge_j, const double *edge_vec, int64_t nlocal, bool want_fij) {
  check_inputs(natoms, species, nedges, edge_i, edge_j, edge_vec, nlocal);
  ensure_capacity(natoms, nedges);
  natoms_ = natoms;
  nedges_ = nedges;
  ++ncalls_;
  energy_ = 0.0;
  std::fill(atom_energy_.begin(), atom_energy_.begin() + natoms, 0.0);
  std::fill(fij_.begin(), fij_.begin() + 3 * nedges, 0.0);
  if (natoms == 0) return;

  auto cpu_double = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor sp, ei, ev;
  upload(natoms, species, nedges, edge_i, edge_j, edge_vec, sp, ei, ev);
  if (!dump_prefix_.empty()) debug_dump(sp, ei, ev, nlocal);
  select_aoti();
  if (aoti_ && natoms >= 2 && nedges >= 2) {
    // the package always computes fij (one fused forward + backward)
    run_aoti(natoms, nedges, nlocal, sp, ei, ev, edge_i, edge_j, edge_vec);
    if (debug_)
      std::fprintf(stderr, "polyget: call %lld (AOTInductor) natoms=%lld nlocal=%lld nedges=%lld "
                   "energy=%.12g\n", static_cast<long long>(ncalls_), static_cast<long long>(natoms),
                   static_cast<long long>(nlocal), static_cast<long long>(nedges), energy_);
    return;
  }
  if (want_fij) ev.requires_grad_(true);

  torch::Tensor out;
  {
    c10::optional<torch::NoGradGuard> no_grad;
    if (!want_fij) no_grad.emplace();
    std::vector<torch::jit::IValue> inputs{sp, ei, ev};
    torch::jit::IValue result = module_.forward(inputs);
    if (!result.isTensor())
      throw ModelError(path_ + ": model forward returned " + result.tagKind() +
                       ", expected a tensor of per-atom energies [N]");
    out = result.toTensor();
  }
  if (out.dim() != 1 || out.size(0) != natoms)
    throw ModelError(path_ + ": model forward returned shape " + c10::str(out.sizes()) +
                     ", expected per-atom energies of shape [" + std::to_string(natoms) + "]");

  torch::Tensor host_ae = torch::from_blob(atom_energy_.data(), {natoms}, cpu_double);
  host_ae.copy_(out.detach());
  for (int64_t a = 0; a < nlocal; ++a) energy_ += atom_energy_[a];

  if (want_fij && nedges > 0) {
    torch::Tensor e_own = out.narrow(0, 0, nlocal).sum();
    if (e_own.requires_grad()) {
      auto grads = torch::autograd::grad({e_own}, {ev}, /*grad_outputs=*/{},
                                         /*retain_graph=*/false, /*create_graph=*/false,
                                         /*allow_unused=*/true);
      if (grads[0].defined()) {
        torch::Tensor host_f = torch::from_blob(fij_.data(), {nedges, 3}, cpu_double);
        host_f.copy_(grads[0]);
      }
    }
  }
  if (debug_)
    std::fprintf(stderr, "polyget: call %lld natoms=%lld nlocal=%lld nedges=%lld energy=%.12g\n",
                 static_cast<long long>(ncalls_), static_cast<long long>(natoms),
                 static_cast<long long>(nlocal), static_cast<long long>(nedges), energy_);
}

void Model::upload(int64_t natoms, const int64_t *species, int64_t nedges, const int64_t *edge_i,
                   const int64_t *edge_j, const double *edge_vec, torch::Tensor &sp,
                   torch::Tensor &ei, torch::Tensor &ev) {
  auto cpu_long = torch::TensorOptions().dtype(torch::kInt64);
  auto cpu_double = torch::TensorOptions().dtype(torch::kFloat64);
  sp = species_buf_.narrow(0, 0, natoms);
  if (natoms > 0) sp.copy_(torch::from_blob(const_cast<int64_t *>(species), {natoms}, cpu_long));
  ei = edge_index_buf_.narrow(0, 0, 2 * nedges).view({2, nedges});
  ev = edge_vec_buf_.narrow(0, 0, nedges);
  if (nedges > 0) {
    ei[0].copy_(torch::from_blob(const_cast<int64_t *>(edge_i), {nedges}, cpu_long));
    ei[1].copy_(torch::from_blob(const_cast<int64_t *>(edge_j), {nedges}, cpu_long));
    ev.copy_(torch::from_blob(const_cast<double *>(edge_vec), {nedges, 3}, cpu_double));
  }
  ev = ev.detach();
}

// ---------------------------------------------------------------------------------------------
// per-layer halo exchange
// ---------------------------------------------------------------------------------------------

namespace {

// what one exchange autograd node needs (lives on compute_halo's stack for the whole call)
struct ExchangeState {
  HaloExchanger *exchanger = nullptr;
  int64_t nlocal = 0;
  int64_t *n_forward = nullptr;
  int64_t *n_reverse = nullptr;
};

// Copy `ts` (each [natoms, ...], any device) to contiguous host rows [natoms, width], run the
// exchange, copy back. `reverse`: adjoint, then zero the ghost rows. Always works on copies:
// the inputs may be saved by autograd.
// (On CUDA this is a device -> host -> device round trip per exchange: LAMMPS comm buffers are
// host doubles. Never run on a GPU here.)
torch::autograd::variable_list exchange_rows(const torch::autograd::variable_list &ts,
                                             ExchangeState &st, bool reverse) {
  std::vector<torch::Tensor> rows;
  rows.reserve(ts.size());
  for (const auto &t : ts) {
    // [natoms, width] (flatten(1), not view(n, -1): natoms may be 0)
    rows.push_back(t.detach().to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true)
                       .contiguous().flatten(1));
  }
  if (reverse) {
    st.exchanger->reverse(rows);
    for (auto &r : rows) {
      const int64_t n = r.size(0);
      if (n > st.nlocal) r.narrow(0, st.nlocal, n - st.nlocal).zero_();
    }
    ++*st.n_reverse;
  } else {
    st.exchanger->forward(rows);
    ++*st.n_forward;
  }
  torch::autograd::variable_list out;
  out.reserve(ts.size());
  for (size_t k = 0; k < ts.size(); ++k)
    out.push_back(rows[k].view(ts[k].sizes()).to(ts[k].device()));
  return out;
}

// Gradients of `ins` for outputs `outs` with upstream gradients `gouts`, skipping outputs that
// have no autograd graph (a piece may return constants, e.g. zero vectors); inputs the outputs
// do not depend on get zeros (so that every rank runs every reverse exchange: they are collective).
torch::autograd::variable_list backprop(const torch::autograd::variable_list &outs,
                                        const torch::autograd::variable_list &gouts,
                                        const torch::autograd::variable_list &ins) {
  torch::autograd::variable_list o, g;
  for (size_t k = 0; k < outs.size(); ++k)
    if (outs[k].defined() && outs[k].requires_grad() && gouts[k].defined()) {
      o.push_back(outs[k]);
      g.push_back(gouts[k]);
    }
  torch::autograd::variable_list res(ins.size());
  if (!o.empty())
    res = torch::autograd::grad(o, ins, g, /*retain_graph=*/false, /*create_graph=*/false,
                                /*allow_unused=*/true);
  for (size_t k = 0; k < ins.size(); ++k)
    if (!res[k].defined()) res[k] = torch::zeros_like(ins[k]);
  return res;
}

std::pair<torch::Tensor, torch::Tensor> as_pair(const torch::jit::IValue &v,
                                                const std::string &what) {
  if (!v.isTuple() || v.toTuple()->elements().size() != 2)
    throw ModelError(what + " must return a tuple (x, vec), got " + v.tagKind());
  const auto &e = v.toTuple()->elements();
  return {e[0].toTensor(), e[1].toTensor()};
}

}  // namespace

void Model::compute_halo(int64_t natoms, const int64_t *species, int64_t nedges,
                         const int64_t *edge_i, const int64_t *edge_j, const double *edge_vec,
                         int64_t nlocal, HaloExchanger &exchange, bool want_fij) {
  if (!halo_methods_)
    throw ModelError(path_ + " does not support per-layer halo exchange (no num_exchanges "
                     "metadata: exported by an older polyget); re-export it, or use "
                     "pair_style polyget ... ghosts shell");
  check_inputs(natoms, species, nedges, edge_i, edge_j, edge_vec, nlocal);
  for (int64_t k = 0; k < nedges; ++k)
    if (edge_i[k] >= nlocal)
      throw ModelError("edge " + std::to_string(k) + " has centre " + std::to_string(edge_i[k]) +
                       " >= nlocal = " + std::to_string(nlocal) + ": with per-layer exchange, "
                       "edges start at owned atoms only");
  ensure_capacity(natoms, nedges);
  natoms_ = natoms;
  nedges_ = nedges;
  ++ncalls_;
  energy_ = 0.0;
  n_forward_ = n_reverse_ = 0;
  std::fill(atom_energy_.begin(), atom_energy_.begin() + natoms, 0.0);
  std::fill(fij_.begin(), fij_.begin() + 3 * nedges, 0.0);

  auto cpu_double = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor sp, ei, ev;
  upload(natoms, species, nedges, edge_i, edge_j, edge_vec, sp, ei, ev);
  if (want_fij) ev.requires_grad_(true);
  if (!dump_prefix_.empty()) debug_dump(sp, ei, ev, nlocal);

  ExchangeState st;
  st.exchanger = &exchange;
  st.nlocal = nlocal;
  st.n_forward = &n_forward_;
  st.n_reverse = &n_reverse_;
  const int nlayers = meta_.num_layers;
  const bool final_exchange = meta_.num_exchanges > nlayers;
  auto run_interact = [&](int layer, const torch::Tensor &x, const torch::Tensor &vec,
                          const torch::Tensor &ei, const torch::Tensor &feats) {
    return as_pair(module_.run_method("interact", static_cast<int64_t>(layer), x, vec, ei, feats,
                                      nlocal),
                   path_ + ": interact");
  };
  auto leaf = [](const torch::Tensor &t) { return t.detach().requires_grad_(true); };

  // Forward: pieces and exchanges in sequence. The backward pass is explicit, one piece at a
  // time in reverse order, with the reverse exchange of the ghost-row gradients between pieces:
  // every rank runs every exchange by construction. Each piece's inputs are leaves, so only one
  // piece's autograd graph is needed at a time: with recompute on, the forward runs without
  // graphs, keeping only the (exchanged) node features of every layer, and each piece is run
  // again with its graph during the backward pass (peak memory ~ one layer's graph instead of
  // num_layers', for about one more forward pass of compute).
  torch::Tensor out, feats, fd;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> ins(nlayers + 1), outs(nlayers + 1);
  std::pair<torch::Tensor, torch::Tensor> emb;
  const bool keep = want_fij && !recompute_;
  {
    c10::optional<torch::NoGradGuard> no_grad;
    if (!want_fij) no_grad.emplace();
    feats = module_.run_method("edge_features", ev).toTensor();  // small graph [E, 4 + R]
    fd = want_fij ? leaf(feats) : feats;
  }
  {
    c10::optional<torch::NoGradGuard> no_grad;
    if (!keep) no_grad.emplace();
    auto xv = as_pair(module_.run_method("embed", sp, ei, fd, nlocal), path_ + ": embed");
    if (keep) emb = xv;
    for (int layer = 0; layer < nlayers; ++layer) {
      auto ex = exchange_rows({xv.first, xv.second}, st, false);
      ins[layer] = keep ? std::make_pair(leaf(ex[0]), leaf(ex[1])) : std::make_pair(ex[0], ex[1]);
      xv = run_interact(layer, ins[layer].first, ins[layer].second, ei, fd);
      if (keep) outs[layer] = xv;
    }
    if (final_exchange) {
      auto ex = exchange_rows({xv.first, xv.second}, st, false);
      xv = {ex[0], ex[1]};
    }
    ins[nlayers] = want_fij ? std::make_pair(leaf(xv.first), leaf(xv.second)) : xv;
  }
  {
    c10::optional<torch::NoGradGuard> no_grad;
    if (!want_fij) no_grad.emplace();
    torch::jit::IValue r =
        module_.run_method("readout", sp, ins[nlayers].first, ins[nlayers].second, nlocal);
    if (!r.isTensor())
      throw ModelError(path_ + ": readout returned " + r.tagKind() + ", expected a tensor [nlocal]");
    out = r.toTensor();
  }
  if (out.dim() != 1 || out.size(0) != nlocal)
    throw ModelError(path_ + ": readout returned shape " + c10::str(out.sizes()) +
                     ", expected per-atom energies of the owned atoms [" + std::to_string(nlocal) + "]");

  if (nlocal > 0) {
    torch::Tensor host_ae = torch::from_blob(atom_energy_.data(), {nlocal}, cpu_double);
    host_ae.copy_(out.detach());
  }
  for (int64_t a = 0; a < nlocal; ++a) energy_ += atom_energy_[a];

  if (want_fij) {
    // on every rank, even one without edges or owned atoms: its reverse exchanges relay other
    // ranks' gradients
    torch::Tensor gfeats = torch::zeros_like(fd);
    auto g = backprop({out}, {torch::ones_like(out)}, {ins[nlayers].first, ins[nlayers].second});
    if (final_exchange) g = exchange_rows({g[0], g[1]}, st, true);
    for (int layer = nlayers - 1; layer >= 0; --layer) {
      std::pair<torch::Tensor, torch::Tensor> o;
      std::pair<torch::Tensor, torch::Tensor> in;
      if (keep) {
        in = ins[layer];
        o = outs[layer];
        outs[layer] = {};
      } else {
        in = {leaf(ins[layer].first), leaf(ins[layer].second)};
        o = run_interact(layer, in.first, in.second, ei, fd);
      }
      auto gi = backprop({o.first, o.second}, {g[0], g[1]}, {in.first, in.second, fd});
      gfeats.add_(gi[2]);
      ins[layer] = {};
      g = exchange_rows({gi[0], gi[1]}, st, true);
    }
    if (!keep) {
      emb = as_pair(module_.run_method("embed", sp, ei, fd, nlocal), path_ + ": embed");
    }
    gfeats.add_(backprop({emb.first, emb.second}, {g[0], g[1]}, {fd})[0]);
    if (!feats.requires_grad())
      throw ModelError(path_ + ": the edge features do not depend on the edge vectors (no autograd "
                       "graph); forces cannot be computed");
    auto grads = torch::autograd::grad({feats}, {ev}, {gfeats}, /*retain_graph=*/false,
                                       /*create_graph=*/false, /*allow_unused=*/true);
    if (grads[0].defined() && nedges > 0) {
      torch::Tensor host_f = torch::from_blob(fij_.data(), {nedges, 3}, cpu_double);
      host_f.copy_(grads[0]);
    }
    if (n_reverse_ != n_forward_)
      throw ModelError("per-layer exchange: " + std::to_string(n_forward_) + " forward but " +
                       std::to_string(n_reverse_) + " reverse exchanges in one evaluation (they "
                       "must match on every rank); this is a polyget bug, please report it");
  }
  if (debug_)
    std::fprintf(stderr, "polyget: call %lld (halo) natoms=%lld nlocal=%lld nedges=%lld "
                 "exchanges=%lld+%lld energy=%.12g\n",
                 static_cast<long long>(ncalls_), static_cast<long long>(natoms),
                 static_cast<long long>(nlocal), static_cast<long long>(nedges),
                 static_cast<long long>(n_forward_), static_cast<long long>(n_reverse_), energy_);
}

void Model::debug_dump(const torch::Tensor &species, const torch::Tensor &edge_index,
                       const torch::Tensor &edge_vec, int64_t nlocal) {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert("species", species.detach().cpu().clone());
  d.insert("edge_index", edge_index.detach().cpu().clone());
  d.insert("edge_vec", edge_vec.detach().cpu().clone());
  d.insert("nlocal", nlocal);
  std::vector<char> bytes = torch::jit::pickle_save(d);
  std::string fname = dump_prefix_ + "." + std::to_string(ncalls_) + ".pt";
  std::ofstream f(fname, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (debug_) std::fprintf(stderr, "polyget: wrote model inputs to %s\n", fname.c_str());
}

}  // namespace polyget
