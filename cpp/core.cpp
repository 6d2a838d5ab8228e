// polyget C++ core: see core.h.
#include "core.h"

#include "json_min.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

namespace polyget {

namespace {

const char *kExportHint = "re-export it with this polyget: python/export.py CKPT -o NAME.pt";

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
// metadata
// ---------------------------------------------------------------------------------------------

int Metadata::element_index(const std::string &symbol) const {
  for (size_t k = 0; k < elements.size(); ++k)
    if (elements[k] == symbol) return static_cast<int>(k);
  return -1;
}

std::string Metadata::elements_string() const {
  std::string out;
  for (size_t k = 0; k < elements.size(); ++k) out += (k ? " " : "") + elements[k];
  return out;
}

Metadata parse_metadata(const std::string &json_text, const std::string &path) {
  json::Value root;
  try {
    root = json::parse(json_text);
  } catch (const std::exception &e) {
    throw ModelError(path + ": metadata.json is not valid JSON (" + e.what() + "); " + kExportHint);
  }
  if (root.kind != json::Value::Kind::Object)
    throw ModelError(path + ": metadata.json must hold a JSON object; " + kExportHint);

  auto need = [&](const char *key, json::Value::Kind kind) -> const json::Value & {
    if (!root.has(key))
      throw ModelError(path + ": metadata.json has no \"" + key + "\" entry; " + kExportHint);
    const json::Value &v = root.at(key);
    if (v.kind != kind)
      throw ModelError(path + ": metadata.json \"" + key + "\" should be " +
                       json::Value::kind_name(kind) + ", found " + json::Value::kind_name(v.kind) +
                       "; " + kExportHint);
    return v;
  };

  Metadata m;
  m.json = json_text;
  m.format = need("format", json::Value::Kind::String).string;
  if (m.format != kTorchScriptFormat)
    throw ModelError(path + ": metadata.json format is \"" + m.format + "\", expected \"" +
                     kTorchScriptFormat + "\"; pair_style polyget reads the NAME.jit.pt file "
                     "written by python/export.py");

  const json::Value &ver = need("format_version", json::Value::Kind::Number);
  if (!ver.is_integer)
    throw ModelError(path + ": metadata.json format_version must be an integer; " + kExportHint);
  m.format_version = static_cast<int>(ver.number);
  if (m.format_version != kTorchScriptFormatVersion) {
    std::ostringstream msg;
    msg << path << " was exported with format_version " << m.format_version
        << "; this polyget reads format_version " << kTorchScriptFormatVersion << ": ";
    if (m.format_version < kTorchScriptFormatVersion)
      msg << "re-run python/export.py on the checkpoint with this polyget";
    else
      msg << "the file is newer than this build; update polyget (and rebuild the native "
             "module/plugin with scripts/build_native.sh) or export with the older polyget";
    throw ModelError(msg.str());
  }

  const json::Value &els = need("elements", json::Value::Kind::Array);
  if (els.array.empty())
    throw ModelError(path + ": metadata.json \"elements\" is empty; " + kExportHint);
  std::set<std::string> seen;
  for (const auto &e : els.array) {
    if (e.kind != json::Value::Kind::String || e.string.empty())
      throw ModelError(path + ": metadata.json \"elements\" must be a list of element symbols; " +
                       kExportHint);
    if (!seen.insert(e.string).second)
      throw ModelError(path + ": element " + e.string + " appears twice in metadata.json; " +
                       kExportHint);
    m.elements.push_back(e.string);
  }

  m.cutoff = need("cutoff", json::Value::Kind::Number).number;
  if (!(m.cutoff > 0.0) || !std::isfinite(m.cutoff))
    throw ModelError(path + ": metadata.json cutoff must be a positive number of Angstrom, found " +
                     std::to_string(m.cutoff) + "; " + kExportHint);

  const json::Value &nl = need("num_layers", json::Value::Kind::Number);
  if (!nl.is_integer || nl.number < 1)
    throw ModelError(path + ": metadata.json num_layers must be an integer >= 1; " + kExportHint);
  m.num_layers = static_cast<int>(nl.number);
  m.receptive_hops = m.num_layers + 1;
  if (root.has("receptive_hops")) {
    const json::Value &rh = root.at("receptive_hops");
    if (rh.kind != json::Value::Kind::Number || !rh.is_integer || rh.number < 1)
      throw ModelError(path + ": metadata.json receptive_hops must be an integer >= 1; " +
                       kExportHint);
    m.receptive_hops = static_cast<int>(rh.number);
  }

  m.dtype = need("dtype", json::Value::Kind::String).string;
  if (m.dtype != "float64" && m.dtype != "float32")
    throw ModelError(path + ": metadata.json dtype is \"" + m.dtype +
                     "\", expected \"float64\" or \"float32\"; " + kExportHint);

  const json::Value &units = need("units", json::Value::Kind::Object);
  auto unit = [&](const char *key) {
    if (!units.has(key) || units.at(key).kind != json::Value::Kind::String)
      throw ModelError(path + ": metadata.json units has no \"" + key + "\" string; " + kExportHint);
    return units.at(key).string;
  };
  m.energy_unit = unit("energy");
  m.length_unit = unit("length");
  if (m.energy_unit != "eV" || m.length_unit != "Angstrom")
    throw ModelError(path + ": model units are energy=" + m.energy_unit +
                     ", length=" + m.length_unit +
                     "; the polyget core works in eV and Angstrom (units metal): re-export the "
                     "model in eV/Angstrom");

  if (root.has("per_layer_exchange")) {
    const json::Value &pl = root.at("per_layer_exchange");
    auto positive_int = [&](const char *key) {
      if (pl.kind != json::Value::Kind::Object || !pl.has(key) ||
          pl.at(key).kind != json::Value::Kind::Number || !pl.at(key).is_integer ||
          pl.at(key).number < 0)
        throw ModelError(path + ": metadata.json per_layer_exchange must be an object with "
                         "integer entries num_exchanges and width; " + kExportHint);
      return static_cast<int>(pl.at(key).number);
    };
    m.per_layer_exchange = true;
    m.num_exchanges = positive_int("num_exchanges");
    m.exchange_width = positive_int("width");
    if (m.exchange_width < 1)
      throw ModelError(path + ": metadata.json per_layer_exchange.width must be >= 1; " + kExportHint);
  }

  if (root.has("polyget_version") && root.at("polyget_version").kind == json::Value::Kind::String)
    m.polyget_version = root.at("polyget_version").string;
  if (root.has("torch_version") && root.at("torch_version").kind == json::Value::Kind::String)
    m.torch_version = root.at("torch_version").string;
  return m;
}

// ---------------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------------

torch::Device choose_device(const std::string &request, int local_rank) {
  const bool built_with_cuda = at::globalContext().hasCUDA();
  const bool cuda_ok = built_with_cuda && torch::cuda::is_available();
  const int ngpu = cuda_ok ? static_cast<int>(torch::cuda::device_count()) : 0;
  auto by_rank = [&]() {
    int idx = local_rank >= 0 ? local_rank % ngpu : 0;
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
  if (!file_readable(path))
    throw ModelError("cannot open model file '" + path +
                     "': no such file or not readable (expected NAME.jit.pt written by "
                     "python/export.py)");

  device_ = choose_device(device, local_rank);

  torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
  const std::string what = classify_non_torchscript(path);
  if (!what.empty())
    throw ModelError("'" + path + "' is " + what + ". pair_style polyget / polyget._core need "
                     "NAME.jit.pt written by python/export.py" + jit_sibling_hint(path));
  try {
    module_ = torch::jit::load(path, torch::Device(torch::kCPU), extra);
  } catch (const std::exception &e) {
    throw ModelError("'" + path + "' is not a TorchScript file (" + first_line(e.what()) +
                     "). pair_style polyget / polyget._core need NAME.jit.pt written by "
                     "python/export.py; the ML-IAP pickle NAME.pt is for pair_style mliap "
                     "unified" + jit_sibling_hint(path));
  }
  if (extra["metadata.json"].empty())
    throw ModelError("'" + path + "' is a TorchScript file without polyget metadata.json, so it "
                     "is not a polyget export; write it with python/export.py" +
                     jit_sibling_hint(path));
  meta_ = parse_metadata(extra["metadata.json"], path);
  dtype_ = meta_.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;

  // the TorchScript attributes, when present, must agree with the metadata
  if (module_.hasattr("cutoff")) {
    auto c = module_.attr("cutoff");
    if (c.isDouble() && std::abs(c.toDouble() - meta_.cutoff) > 1e-12 * std::max(1.0, meta_.cutoff))
      throw ModelError(path + ": model.cutoff = " + std::to_string(c.toDouble()) +
                       " but metadata.json cutoff = " + std::to_string(meta_.cutoff) + "; " +
                       kExportHint);
  }
  if (module_.hasattr("num_layers")) {
    auto n = module_.attr("num_layers");
    if (n.isInt() && n.toInt() != meta_.num_layers)
      throw ModelError(path + ": model.num_layers = " + std::to_string(n.toInt()) +
                       " but metadata.json num_layers = " + std::to_string(meta_.num_layers) +
                       "; " + kExportHint);
  }
  for (const auto &p : module_.parameters()) {
    if (p.is_floating_point() && p.scalar_type() != dtype_)
      throw ModelError(path + ": metadata.json says dtype " + meta_.dtype +
                       " but the model's parameters are " + std::string(c10::toString(p.scalar_type())) +
                       "; " + kExportHint);
  }

  if (meta_.per_layer_exchange) {
    for (const char *name : {"edge_features", "embed", "interact", "readout"})
      if (!module_.find_method(name))
        throw ModelError(path + ": metadata.json says per_layer_exchange but the TorchScript "
                         "model has no method " + name + "; " + kExportHint);
    if (module_.hasattr("num_exchanges")) {
      auto n = module_.attr("num_exchanges");
      if (n.isInt() && n.toInt() != meta_.num_exchanges)
        throw ModelError(path + ": model.num_exchanges = " + std::to_string(n.toInt()) +
                         " but metadata.json per_layer_exchange.num_exchanges = " +
                         std::to_string(meta_.num_exchanges) + "; " + kExportHint);
    }
    if (meta_.num_exchanges != meta_.num_layers && meta_.num_exchanges != meta_.num_layers + 1)
      throw ModelError(path + ": per_layer_exchange.num_exchanges = " +
                       std::to_string(meta_.num_exchanges) + " must be num_layers (" +
                       std::to_string(meta_.num_layers) + ") or num_layers + 1; " + kExportHint);
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
  // POLYGET_JIT_OPTIMIZE=0 turns off the TorchScript graph optimiser (a debugging aid)
  const char *opt = std::getenv("POLYGET_JIT_OPTIMIZE");
  if (opt && std::string(opt) == "0") torch::jit::setGraphExecutorOptimize(false);
}

void Model::ensure_capacity(int64_t natoms, int64_t nedges) {
  auto long_opts = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  if (natoms > cap_atoms_ || !species_buf_.defined()) {
    cap_atoms_ = grow(natoms);
    species_buf_ = torch::empty({cap_atoms_}, long_opts);
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
  if (want_fij) ev.requires_grad_(true);
  if (!dump_prefix_.empty()) debug_dump(sp, ei, ev, nlocal);

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

// ghost rows of (x, vec) := owners' rows; backward: ghost-row gradients added to the owners
struct HaloExchangeFunction : public torch::autograd::Function<HaloExchangeFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx,
                                                torch::Tensor x, torch::Tensor vec,
                                                int64_t state) {
    ctx->saved_data["state"] = state;
    auto *st = reinterpret_cast<ExchangeState *>(state);
    return exchange_rows({x, vec}, *st, false);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto *st = reinterpret_cast<ExchangeState *>(ctx->saved_data["state"].toInt());
    // undefined gradients arrive as zeros (materialised), so every rank runs every reverse
    // exchange: they are collective
    auto g = exchange_rows({grads[0], grads[1]}, *st, true);
    return {g[0], g[1], torch::Tensor()};
  }
};

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
    throw ModelError(path_ + " does not support per-layer halo exchange (no per_layer_exchange "
                     "in metadata.json: exported by an older polyget); re-export it, or use "
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
  const int64_t state = reinterpret_cast<int64_t>(&st);
  const int nlayers = meta_.num_layers;

  torch::Tensor out;
  {
    c10::optional<torch::NoGradGuard> no_grad;
    if (!want_fij) no_grad.emplace();
    torch::Tensor feats = module_.run_method("edge_features", ev).toTensor();
    auto xv = as_pair(module_.run_method("embed", sp, ei, feats, nlocal), path_ + ": embed");
    for (int layer = 0; layer < nlayers; ++layer) {
      auto ex = HaloExchangeFunction::apply(xv.first, xv.second, state);
      xv = as_pair(module_.run_method("interact", static_cast<int64_t>(layer), ex[0], ex[1], ei,
                                      feats, nlocal),
                   path_ + ": interact");
    }
    if (meta_.num_exchanges > nlayers) {
      auto ex = HaloExchangeFunction::apply(xv.first, xv.second, state);
      xv = {ex[0], ex[1]};
    }
    torch::jit::IValue r = module_.run_method("readout", sp, xv.first, xv.second, nlocal);
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
    // one backward pass through all pieces and exchanges, on every rank (even one without
    // edges or owned atoms: its reverse exchanges relay other ranks' gradients)
    torch::Tensor e_own = out.sum();
    if (!e_own.requires_grad())
      throw ModelError(path_ + ": the energy does not depend on the edge vectors (no autograd "
                       "graph); the reverse exchanges could not run");
    auto grads = torch::autograd::grad({e_own}, {ev}, /*grad_outputs=*/{},
                                       /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
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
