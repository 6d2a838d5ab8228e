// polyget engine contract, C++ side: mirrors python/polyget/contract.py (units and factors,
// formats and versions, metadata records and their checks, the halo rule, the special_bonds
// rule, the minimum-distance rule and the messages). tests/test_contract.py checks that both
// read one exported file field by field and print the same messages.
//
// Header-only and free of torch and LAMMPS headers: core.cpp reads the records out of the
// TorchScript archive, pair_polyget.cpp applies the LAMMPS rules.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace polyget {

// ---- formats --------------------------------------------------------------------------------
constexpr const char *kTorchScriptFormat = "polyget-torchscript";
constexpr int kTorchScriptFormatVersion = 2;  // 2: flat metadata records
constexpr const char *kRecordPrefix = "polyget.";  // extra files "polyget.<key>"
constexpr const char *kLegacyRecord = "metadata.json";  // format 1
constexpr double kDefaultMinDistance = 0.5;  // Angstrom
constexpr const char *kExportHint =
    "re-export it with this polyget: python python/export.py CKPT -o NAME.pt";

// contract keys, in the order of polyget.contract.METADATA_KEYS
inline const std::vector<std::string> &metadata_keys() {
  static const std::vector<std::string> keys = {
      "format", "format_version", "elements", "cutoff", "num_layers", "receptive_hops",
      "dtype", "energy_unit", "length_unit", "min_distance", "polyget_version",
      "torch_version"};
  return keys;
}

// optional keys, in the order of polyget.contract.OPTIONAL_METADATA_KEYS
inline const std::vector<std::string> &optional_metadata_keys() {
  static const std::vector<std::string> keys = {"num_exchanges", "exchange_width", "aoti_package",
                                                "fingerprint"};
  return keys;
}

// ---- units ----------------------------------------------------------------------------------
constexpr double kEvToKcalPerMol = 23.060548;  // 1 eV in kcal/mol (CODATA 2018: 23.0605478)

// eV -> the LAMMPS energy unit of `unit_style` (lengths are Angstrom in both); < 0: unsupported
inline double lammps_energy_factor(const std::string &unit_style) {
  if (unit_style == "metal") return 1.0;
  if (unit_style == "real") return kEvToKcalPerMol;
  return -1.0;
}

inline std::string units_message(const std::string &unit_style) {
  return "polyget: units " + unit_style +
         " are not supported: polyget models are in eV and Angstrom; use 'units metal' "
         "(native) or 'units real' (converted)";
}

// Every problem with a model file or with the inputs: the message says what was expected, what
// was found, and what to do.
class ModelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- metadata -------------------------------------------------------------------------------
struct Metadata {
  std::string format;
  int format_version = 0;
  std::vector<std::string> elements;
  double cutoff = 0.0;
  int num_layers = 0;
  int receptive_hops = 0;  // read from the export, never recomputed
  std::string dtype;       // "float64" or "float32"
  std::string energy_unit;
  std::string length_unit;
  double min_distance = kDefaultMinDistance;
  std::string polyget_version;
  std::string torch_version;
  // optional records (absent in files without the feature): per-layer halo exchange. The file
  // then holds the TorchScript methods edge_features/embed/interact/readout; node features
  // are exchanged num_exchanges times per evaluation, exchange_width numbers per atom each.
  int num_exchanges = 0;
  int exchange_width = 0;
  bool per_layer_exchange() const { return num_exchanges > 0; }
  // optional records of the compiled form: aoti_package = file name of the AOTInductor package
  // next to NAME.jit.pt (python/polyget/compile.py); fingerprint = hash of the weights, repeated
  // in the package so that a stale package is never run with a newer TorchScript file. Empty
  // when absent.
  std::string aoti_package;
  std::string fingerprint;

  int element_index(const std::string &symbol) const {
    for (size_t k = 0; k < elements.size(); ++k)
      if (elements[k] == symbol) return static_cast<int>(k);
    return -1;
  }
  std::string elements_string() const {
    std::string out;
    for (size_t k = 0; k < elements.size(); ++k) out += (k ? " " : "") + elements[k];
    return out;
  }
};

namespace detail {
inline std::string trim(const std::string &s) {
  const char *ws = " \t\r\n";
  auto a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}
// shortest-round-trip text of a double, as Python's repr (for messages: "%.17g" is exact too)
inline std::string fmt(const char *format, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, x);
  return buf;
}
}  // namespace detail

// Validated metadata from the flat records (record name without "extra/" -> text). Mirrors
// polyget.contract.parse_records: same checks, same messages.
inline Metadata parse_records(const std::map<std::string, std::string> &records,
                              const std::string &source) {
  const std::string pre = kRecordPrefix;
  if (!records.count(pre + "format")) {
    if (records.count(kLegacyRecord))
      throw ModelError(source + " was exported by an older polyget (TorchScript format 1, "
                       "metadata.json); this polyget reads format " +
                       std::to_string(kTorchScriptFormatVersion) + ": " + kExportHint);
    throw ModelError(source + " is a TorchScript file without polyget metadata, so it is not a "
                     "polyget export; write it with python/export.py");
  }
  auto text = [&](const std::string &key) {
    auto it = records.find(pre + key);
    if (it == records.end())
      throw ModelError(source + ": metadata has no " + key + " record; " + kExportHint);
    return detail::trim(it->second);
  };
  auto as_int = [&](const std::string &key) {
    const std::string t = text(key);
    char *end = nullptr;
    long v = std::strtol(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0')
      throw ModelError(source + ": metadata " + key + " must be an integer, found '" + t +
                       "'; " + kExportHint);
    return static_cast<int>(v);
  };
  auto as_double = [&](const std::string &key) {
    const std::string t = text(key);
    char *end = nullptr;
    double v = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0')
      throw ModelError(source + ": metadata " + key + " must be a number, found '" + t +
                       "'; " + kExportHint);
    return v;
  };
  auto bad = [&](const std::string &what) {
    return ModelError(source + ": metadata " + what + "; " + kExportHint);
  };

  Metadata m;
  m.format = text("format");
  if (m.format != kTorchScriptFormat)
    throw ModelError(source + ": metadata format is '" + m.format + "', expected '" +
                     kTorchScriptFormat + "'; pair_style polyget and the ASE calculator read "
                     "the NAME.jit.pt file written by python/export.py");
  m.format_version = as_int("format_version");
  if (m.format_version != kTorchScriptFormatVersion) {
    std::string what = m.format_version < kTorchScriptFormatVersion
        ? "re-run python/export.py on the checkpoint with this polyget"
        : "the file is newer than this polyget; update polyget (and rebuild the native code "
          "with scripts/build_native.sh) or export with the older one";
    throw ModelError(source + " was exported with format_version " +
                     std::to_string(m.format_version) + "; this polyget reads format_version " +
                     std::to_string(kTorchScriptFormatVersion) + ": " + what);
  }
  {
    std::istringstream in(text("elements"));
    std::string sym;
    while (in >> sym) m.elements.push_back(sym);
  }
  m.cutoff = as_double("cutoff");
  m.num_layers = as_int("num_layers");
  m.receptive_hops = as_int("receptive_hops");
  m.dtype = text("dtype");
  m.energy_unit = text("energy_unit");
  m.length_unit = text("length_unit");
  m.min_distance = as_double("min_distance");
  m.polyget_version = text("polyget_version");
  m.torch_version = text("torch_version");
  // optional records: absent means the feature is absent
  if (records.count(pre + "num_exchanges")) m.num_exchanges = as_int("num_exchanges");
  if (records.count(pre + "exchange_width")) m.exchange_width = as_int("exchange_width");
  if (records.count(pre + "aoti_package")) m.aoti_package = text("aoti_package");
  if (records.count(pre + "fingerprint")) m.fingerprint = text("fingerprint");

  if (m.elements.empty()) throw bad("elements is empty");
  if (std::set<std::string>(m.elements.begin(), m.elements.end()).size() != m.elements.size())
    throw bad("elements has a repeated symbol (" + m.elements_string() + ")");
  if (!(std::isfinite(m.cutoff) && m.cutoff > 0))
    throw bad("cutoff must be a positive number of Angstrom, found " +
              detail::fmt("%.17g", m.cutoff));
  if (m.num_layers < 1)
    throw bad("num_layers must be an integer >= 1, found " + std::to_string(m.num_layers));
  if (m.receptive_hops < 1)
    throw bad("receptive_hops must be an integer >= 1, found " +
              std::to_string(m.receptive_hops));
  if (m.dtype != "float64" && m.dtype != "float32")
    throw bad("dtype is '" + m.dtype + "', expected float64 or float32");
  if (!(std::isfinite(m.min_distance) && m.min_distance >= 0))
    throw bad("min_distance must be a number >= 0 (Angstrom), found " +
              detail::fmt("%.17g", m.min_distance));
  if (records.count(pre + "num_exchanges") != records.count(pre + "exchange_width"))
    throw bad("has only one of num_exchanges and exchange_width (per-layer exchange needs both)");
  if (records.count(pre + "num_exchanges") &&
      (m.num_exchanges < m.num_layers || m.num_exchanges > m.num_layers + 1))
    throw bad("num_exchanges must be num_layers or num_layers + 1, found " +
              std::to_string(m.num_exchanges));
  if (records.count(pre + "exchange_width") && m.exchange_width < 1)
    throw bad("exchange_width must be an integer >= 1, found " + std::to_string(m.exchange_width));
  if (m.energy_unit != "eV" || m.length_unit != "Angstrom")
    throw ModelError(source + ": model units are energy=" + m.energy_unit + ", length=" +
                     m.length_unit + "; polyget engines work in eV and Angstrom (units metal): "
                     "re-export the model in eV/Angstrom");
  return m;
}

// ---- LAMMPS rules ---------------------------------------------------------------------------
// ghost atoms needed around a subdomain when the graph is cut: receptive_hops x cutoff + skin
inline double halo_cutoff(int receptive_hops, double cutoff, double skin) {
  return receptive_hops * cutoff + skin;
}
// the comm_modify cutoff to print: halo_cutoff rounded up to 0.1 A
inline double comm_cutoff_suggestion(int receptive_hops, double cutoff, double skin) {
  return std::ceil(halo_cutoff(receptive_hops, cutoff, skin) * 10.0 - 1e-9) / 10.0;
}

inline int gpu_for_rank(int node_local_rank, int ngpu) {
  return (ngpu > 0 && node_local_rank >= 0) ? node_local_rank % ngpu : 0;
}

// LAMMPS removes a 1-2/1-3/1-4 pair from the neighbour list when both its lj and coul factors
// are 0.0; 1-3 and 1-4 partners come from the bonds alone, so any bond makes all three count.
constexpr const char *kSpecialBondsFix = "special_bonds lj/coul 1.0 1.0 1.0";
inline std::string special_bonds_message() {
  return std::string(
             "polyget: special_bonds removes bonded pairs (1-2, 1-3 or 1-4 factors of 0, "
             "LAMMPS' default for data files with bonds) from the neighbour list, but the model "
             "needs every pair within its cutoff: add '") +
         kSpecialBondsFix + "' to the input (bonded terms, if any, are then yours to exclude)";
}
inline bool special_bonds_drop_pairs(int64_t nbonds, const double *special_lj,
                                     const double *special_coul) {
  if (nbonds <= 0) return false;
  for (int k = 1; k <= 3; ++k)
    if (special_lj[k] == 0.0 && special_coul[k] == 0.0) return true;
  return false;
}

constexpr const char *kMliapMinDistanceOverride = "variable polyget_min_distance equal <A>";
constexpr const char *kPairMinDistanceOverride = "pair_style polyget FILE min_distance <A>";
inline std::string min_distance_message(int64_t step, int64_t tag_i, int64_t tag_j, double r,
                                        double threshold, const std::string &override_hint) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "polyget: atoms %lld and %lld are %.4f A apart at step %lld, closer than the "
                "minimum distance %.4f A (overlapping atoms: check the data file, the timestep "
                "and the thermostat; to change the threshold: %s)",
                static_cast<long long>(tag_i), static_cast<long long>(tag_j), r,
                static_cast<long long>(step), threshold, override_hint.c_str());
  return buf;
}

// ---- stability watchdog (pair_style polyget ... bond_stretch R; python: polyget.md.Watchdog) --
// Bonds of the start structure: pairs closer than kBondFactor x (sum of covalent radii); a run
// stops when one of them is longer than R x its start length. Radii: Cordero et al. 2008 (the
// values ASE's natural_cutoffs uses), for the elements of organic polymers; 0: unknown.
constexpr double kBondFactor = 1.2;
inline double covalent_radius(const std::string &el) {
  static const std::map<std::string, double> r = {
      {"H", 0.31}, {"He", 0.28}, {"Li", 1.28}, {"Be", 0.96}, {"B", 0.84}, {"C", 0.76},
      {"N", 0.71}, {"O", 0.66}, {"F", 0.57}, {"Ne", 0.58}, {"Na", 1.66}, {"Mg", 1.41},
      {"Al", 1.21}, {"Si", 1.11}, {"P", 1.07}, {"S", 1.05}, {"Cl", 1.02}, {"Ar", 1.06},
      {"K", 2.03}, {"Ca", 1.76}, {"Ge", 1.20}, {"Se", 1.20}, {"Br", 1.20}, {"Sn", 1.39},
      {"I", 1.39}};
  auto it = r.find(el);
  return it == r.end() ? 0.0 : it->second;
}

inline std::string bond_stretch_message(int64_t step, int64_t tag_i, const std::string &el_i,
                                        int64_t tag_j, const std::string &el_j, double r,
                                        double r0, double limit) {
  // r > 0: the bond's length now; r <= 0: its atoms are out of each other's neighbour range
  char what[256], buf[768];
  if (r > 0)
    std::snprintf(what, sizeof what, "stretched to %.3f A, %.2f x its start length %.3f A", r,
                  r / r0, r0);
  else
    std::snprintf(what, sizeof what, "(start length %.3f A) is broken: the atoms are more than "
                  "%.2f x that apart", r0, limit);
  std::snprintf(buf, sizeof buf,
                "polyget watchdog: step %lld: bond %s%lld-%s%lld %s (limit bond_stretch %.2f%s): "
                "check the timestep, the thermostat and whether the potential covers this "
                "chemistry; bond_stretch 0 turns the check off",
                static_cast<long long>(step), el_i.c_str(), static_cast<long long>(tag_i),
                el_j.c_str(), static_cast<long long>(tag_j), what, limit,
                r > 0 ? "; the molecule is breaking" : "");
  return buf;
}

inline std::string nonfinite_message(int64_t step, const char *what, int64_t tag,
                                      const std::string &el) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "polyget watchdog: step %lld: non-finite %s on atom %s%lld (NaN or inf): the run "
                "has blown up or the input is broken; check the data file, the timestep and the "
                "thermostat (at step 0: the model file may be damaged, re-export it)",
                static_cast<long long>(step), what, el.c_str(), static_cast<long long>(tag));
  return buf;
}

// pair_coeff * * E1 .. En: "" if right, else the message (as polyget.contract)
inline std::string check_elements_for_types(int ntypes, const std::vector<std::string> &given,
                                            const Metadata &meta) {
  const std::string expect =
      "expected: pair_coeff * * <element per atom type>, " + std::to_string(ntypes) +
      " element(s) for " + std::to_string(ntypes) +
      " atom type(s), each one of the model's elements: " + meta.elements_string();
  if (static_cast<int>(given.size()) != ntypes) {
    std::string list;
    for (size_t k = 0; k < given.size(); ++k) list += (k ? " " : "") + given[k];
    return "polyget: pair_coeff gives " + std::to_string(given.size()) + " element(s) (" + list +
           ") for " + std::to_string(ntypes) + " atom type(s); " + expect;
  }
  for (int t = 1; t <= ntypes; ++t) {
    const std::string &s = given[t - 1];
    if (s == "NULL")
      return "polyget: pair_coeff maps atom type " + std::to_string(t) +
             " to NULL, which polyget does not support (an atom the model does not see would "
             "change its neighbours' energies); " + expect;
    if (meta.element_index(s) < 0)
      return "polyget: element " + s + " (atom type " + std::to_string(t) +
             " in pair_coeff) is not in this model; " + expect;
  }
  return "";
}

}  // namespace polyget
