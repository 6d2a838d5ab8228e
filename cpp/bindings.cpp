// pybind11 module polyget._core: the C++ core (core.h) from Python, on numpy arrays.
// python/polyget/native.py wraps it (torch tensors in/out, friendly errors).
#include "core.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <torch/csrc/api/include/torch/version.h>

#include <tuple>

namespace py = pybind11;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::tuple compute(polyget::Model &model, I64Array species, I64Array edge_index, F64Array edge_vec,
                  int64_t nlocal, bool want_fij) {
  if (species.ndim() != 1)
    throw polyget::ModelError("species must have shape [N], found " +
                              std::to_string(species.ndim()) + " dimensions");
  const int64_t natoms = species.shape(0);
  if (edge_index.ndim() != 2 || edge_index.shape(0) != 2)
    throw polyget::ModelError("edge_index must have shape [2, E]");
  const int64_t nedges = edge_index.shape(1);
  if (edge_vec.ndim() != 2 || edge_vec.shape(0) != nedges || edge_vec.shape(1) != 3)
    throw polyget::ModelError("edge_vec must have shape [E, 3] = [" + std::to_string(nedges) +
                              ", 3] to match edge_index");
  if (nlocal < 0) nlocal = natoms;

  const int64_t *ei = edge_index.data();
  {
    py::gil_scoped_release release;
    model.compute(natoms, species.data(), nedges, ei, ei + nedges, edge_vec.data(), nlocal,
                  want_fij);
  }
  F64Array ae(natoms);
  std::copy(model.atom_energy(), model.atom_energy() + natoms, ae.mutable_data());
  F64Array fij({nedges, static_cast<int64_t>(3)});
  std::copy(model.fij(), model.fij() + 3 * nedges, fij.mutable_data());
  return py::make_tuple(model.energy(), ae, fij);
}

// ghost row nlocal + g copies row owner[g] (< nlocal + g: a ghost may copy an earlier ghost, as
// LAMMPS relays do); reverse is the exact adjoint (later ghosts first)
class IndexExchanger : public polyget::HaloExchanger {
 public:
  IndexExchanger(std::vector<int64_t> owner, int64_t nlocal) : owner_(std::move(owner)), nlocal_(nlocal) {}
  void forward(const std::vector<torch::Tensor> &rows) override {
    for (const auto &r : rows)
      for (size_t g = 0; g < owner_.size(); ++g) r[nlocal_ + g].copy_(r[owner_[g]]);
  }
  void reverse(const std::vector<torch::Tensor> &rows) override {
    for (const auto &r : rows)
      for (size_t g = owner_.size(); g-- > 0;) r[owner_[g]].add_(r[nlocal_ + g]);
  }

 private:
  std::vector<int64_t> owner_;
  int64_t nlocal_;
};

py::tuple compute_halo(polyget::Model &model, I64Array species, I64Array edge_index,
                       F64Array edge_vec, int64_t nlocal, I64Array owner, bool want_fij) {
  if (species.ndim() != 1 || edge_index.ndim() != 2 || edge_index.shape(0) != 2 ||
      edge_vec.ndim() != 2 || edge_vec.shape(1) != 3 || edge_vec.shape(0) != edge_index.shape(1))
    throw polyget::ModelError("expected species [N], edge_index [2, E], edge_vec [E, 3]");
  const int64_t natoms = species.shape(0);
  const int64_t nedges = edge_index.shape(1);
  if (owner.ndim() != 1 || owner.shape(0) != natoms - nlocal)
    throw polyget::ModelError("owner must have one entry per ghost: shape [" +
                              std::to_string(natoms - nlocal) + "]");
  std::vector<int64_t> own(owner.data(), owner.data() + owner.shape(0));
  for (size_t g = 0; g < own.size(); ++g)
    if (own[g] < 0 || own[g] >= nlocal + static_cast<int64_t>(g))
      throw polyget::ModelError("owner[" + std::to_string(g) + "] must be a row before the ghost "
                                "(0 <= owner[g] < nlocal + g)");
  IndexExchanger ex(std::move(own), nlocal);
  const int64_t *ei = edge_index.data();
  {
    py::gil_scoped_release release;
    model.compute_halo(natoms, species.data(), nedges, ei, ei + nedges, edge_vec.data(), nlocal,
                       ex, want_fij);
  }
  F64Array ae(nlocal);
  std::copy(model.atom_energy(), model.atom_energy() + nlocal, ae.mutable_data());
  F64Array fij({nedges, static_cast<int64_t>(3)});
  std::copy(model.fij(), model.fij() + 3 * nedges, fij.mutable_data());
  return py::make_tuple(model.energy(), ae, fij);
}

// the contract metadata as the same dict polyget.contract.read_metadata returns (contract keys)
py::dict metadata_dict(const polyget::Metadata &m) {
  py::dict d;
  d["format"] = m.format;
  d["format_version"] = m.format_version;
  d["elements"] = m.elements;
  d["cutoff"] = m.cutoff;
  d["num_layers"] = m.num_layers;
  d["receptive_hops"] = m.receptive_hops;
  d["dtype"] = m.dtype;
  py::dict units;
  units["energy"] = m.energy_unit;
  units["length"] = m.length_unit;
  d["units"] = units;
  d["min_distance"] = m.min_distance;
  d["polyget_version"] = m.polyget_version;
  d["torch_version"] = m.torch_version;
  if (m.per_layer_exchange()) {  // optional records
    d["num_exchanges"] = m.num_exchanges;
    d["exchange_width"] = m.exchange_width;
  }
  if (!m.aoti_package.empty()) d["aoti_package"] = m.aoti_package;
  if (!m.fingerprint.empty()) d["fingerprint"] = m.fingerprint;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "polyget C++ core (libtorch): runs an exported NAME.jit.pt on an edge list";
  m.attr("FORMAT") = polyget::kTorchScriptFormat;
  m.attr("FORMAT_VERSION") = polyget::kTorchScriptFormatVersion;
  m.attr("TORCH_VERSION") = TORCH_VERSION;

  py::register_exception<polyget::ModelError>(m, "ModelError", PyExc_ValueError);

  // the engine contract as C++ reads it (cpp/contract.h), for tests/test_contract.py
  m.attr("EV_TO_KCAL_PER_MOL") = polyget::kEvToKcalPerMol;
  m.attr("DEFAULT_MIN_DISTANCE") = polyget::kDefaultMinDistance;
  m.attr("RECORD_PREFIX") = polyget::kRecordPrefix;
  m.attr("METADATA_KEYS") = polyget::metadata_keys();
  m.attr("SPECIAL_BONDS_MESSAGE") = polyget::special_bonds_message();
  m.attr("MLIAP_MIN_DISTANCE_OVERRIDE") = polyget::kMliapMinDistanceOverride;
  m.attr("PAIR_MIN_DISTANCE_OVERRIDE") = polyget::kPairMinDistanceOverride;
  m.def("read_metadata", [](const std::string &path) {
    return metadata_dict(polyget::read_metadata(path));
  }, py::arg("path"), "contract metadata of NAME.jit.pt, read by the C++ core");
  m.def("read_records", &polyget::read_records, py::arg("path"));
  m.def("lammps_energy_factor", &polyget::lammps_energy_factor, py::arg("unit_style"));
  m.def("units_message", &polyget::units_message);
  m.def("halo_cutoff", &polyget::halo_cutoff);
  m.def("comm_cutoff_suggestion", &polyget::comm_cutoff_suggestion);
  m.def("gpu_for_rank", &polyget::gpu_for_rank);
  m.def("special_bonds_drop_pairs", [](int64_t nbonds, std::vector<double> lj,
                                       std::vector<double> coul) {
    if (lj.size() < 4 || coul.size() < 4) throw polyget::ModelError("need 4 factors each");
    return polyget::special_bonds_drop_pairs(nbonds, lj.data(), coul.data());
  });
  m.def("min_distance_message", &polyget::min_distance_message);
  m.def("check_elements_for_types", [](int ntypes, std::vector<std::string> given,
                                       std::vector<std::string> elements) {
    polyget::Metadata meta;
    meta.elements = elements;
    return polyget::check_elements_for_types(ntypes, given, meta);
  });

  m.def("cuda_available", []() { return polyget::choose_device("auto").is_cuda(); },
        "True when this build's libtorch has CUDA and a GPU is visible");
  m.def("choose_device",
        [](const std::string &request, int local_rank) {
          return polyget::choose_device(request, local_rank).str();
        },
        py::arg("request") = "auto", py::arg("local_rank") = -1);

  py::class_<polyget::Model>(m, "Model")
      .def(py::init<const std::string &, const std::string &, int>(), py::arg("path"),
           py::arg("device") = "auto", py::arg("local_rank") = -1,
           py::call_guard<py::gil_scoped_release>())
      .def("compute", &compute, py::arg("species"), py::arg("edge_index"), py::arg("edge_vec"),
           py::arg("nlocal") = -1, py::arg("want_fij") = true,
           "compute(species[N] int64, edge_index[2,E] int64, edge_vec[E,3] float64, nlocal=-1 "
           "(all), want_fij=True) -> (energy, atom_energies[N], fij[E,3])")
      .def("compute_halo", &compute_halo, py::arg("species"), py::arg("edge_index"),
           py::arg("edge_vec"), py::arg("nlocal"), py::arg("owner"), py::arg("want_fij") = true,
           "compute_halo(species[N], edge_index[2,E] (centres < nlocal), edge_vec[E,3], nlocal, "
           "owner[N-nlocal]: row each ghost copies) -> (energy, atom_energies[nlocal], fij[E,3]): "
           "the model in pieces with per-layer exchange (what pair_style polyget does)")
      .def_property_readonly("supports_halo", &polyget::Model::supports_halo)
      .def_property("recompute", &polyget::Model::recompute, &polyget::Model::set_recompute,
                    "compute_halo: recompute each layer in the backward pass (less memory)")
      .def_property_readonly("uses_aoti", [](polyget::Model &mdl) { mdl.select_aoti(); return mdl.uses_aoti(); },
                             "compute() runs the AOTInductor package (NAME.aoti.pt2) at the "
                             "current torch thread count")
      .def_property_readonly("aoti_thread_counts", &polyget::Model::aoti_thread_counts,
                             "thread counts of the packages that match this file (0: any)")
      .def_property_readonly("aoti_status", [](polyget::Model &mdl) { mdl.select_aoti(); return mdl.aoti_status(); },
                             "which form compute() runs, and why")
      .def_property_readonly("load_seconds", &polyget::Model::load_seconds,
                             "seconds spent loading and warming up the model")
      .def_property_readonly("num_exchanges", [](const polyget::Model &mdl) { return mdl.metadata().num_exchanges; })
      .def_property_readonly("exchange_width", [](const polyget::Model &mdl) { return mdl.metadata().exchange_width; })
      .def_property_readonly("forward_exchanges", &polyget::Model::forward_exchanges)
      .def_property_readonly("reverse_exchanges", &polyget::Model::reverse_exchanges)
      .def_property_readonly("device", &polyget::Model::device_string)
      .def_property_readonly("path", &polyget::Model::path)
      .def_property_readonly("elements", [](const polyget::Model &mdl) { return mdl.metadata().elements; })
      .def_property_readonly("cutoff", [](const polyget::Model &mdl) { return mdl.metadata().cutoff; })
      .def_property_readonly("num_layers", [](const polyget::Model &mdl) { return mdl.metadata().num_layers; })
      .def_property_readonly("receptive_hops", [](const polyget::Model &mdl) { return mdl.metadata().receptive_hops; })
      .def_property_readonly("dtype", [](const polyget::Model &mdl) { return mdl.metadata().dtype; })
      .def_property_readonly("metadata", [](const polyget::Model &mdl) { return metadata_dict(mdl.metadata()); })
      .def_property_readonly("min_distance", [](const polyget::Model &mdl) { return mdl.metadata().min_distance; })
      .def_property_readonly("num_allocations", &polyget::Model::num_allocations)
      .def_property_readonly("atom_capacity", &polyget::Model::atom_capacity)
      .def_property_readonly("edge_capacity", &polyget::Model::edge_capacity);
}
