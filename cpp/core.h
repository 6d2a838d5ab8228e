// polyget C++ core: runs an exported polyget TorchScript model (NAME.jit.pt, see
// docs/interfaces.md section 3) on an edge list, on CPU or CUDA.
//
// Used by the LAMMPS pair style (cpp/pair_polyget.cpp) and by the pybind11 module
// polyget._core (cpp/bindings.cpp). The input is positions-free: species, a full edge list and
// the edge vectors r_j - r_i. The output is the energy of the first `nlocal` atoms, the per-atom
// energies and fij = dE/d(edge_vec), from which callers build forces (F_i += fij, F_j -= fij) and
// the virial (-sum edge_vec (x) fij).
#pragma once

#include "contract.h"

#include <torch/script.h>

#include <memory>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace polyget {

// Flat metadata records of a TorchScript archive ("extra/<name>" -> text), without loading
// the model. Throws ModelError when the file cannot be read as a PyTorch archive.
std::map<std::string, std::string> read_records(const std::string &path);

// Fills the ghost rows of per-atom feature arrays from the atoms they copy, and sends ghost-row
// gradients back. Rows are in engine order: owned atoms [0, nlocal), then ghosts. LAMMPS
// implements it with comm->forward_comm / reverse_comm (pair_polyget.cpp); polyget._core with
// an index map (ghost g copies row owner[g]).
class HaloExchanger {
 public:
  virtual ~HaloExchanger() = default;
  // `rows`: contiguous host tensors [natoms, width_k] of one dtype (float64 or float32).
  // forward: every ghost row := the row of the atom it copies (relays included).
  virtual void forward(const std::vector<torch::Tensor> &rows) = 0;
  // reverse: the exact adjoint of forward: each owner's row += the rows of its ghost copies
  // (the caller zeroes the ghost rows afterwards).
  virtual void reverse(const std::vector<torch::Tensor> &rows) = 0;
};

// The contract metadata of an exported NAME.jit.pt (records parsed by contract.h), with a
// message naming what the file is when it is not one.
Metadata read_metadata(const std::string &path);

// Device selection. `request`: "auto" (CUDA when this libtorch has it and a GPU is visible,
// else CPU), "cpu", "cuda" (GPU local_rank mod GPU count) or "cuda:N". `local_rank` is the
// node-local MPI rank (or -1 outside MPI).
torch::Device choose_device(const std::string &request, int local_rank = -1);

class Model {
 public:
  Model(const std::string &path, const std::string &device = "auto", int local_rank = -1);

  const Metadata &metadata() const { return meta_; }
  // halo a domain needs around it (contract rule, without the skin)
  double interaction_range() const { return halo_cutoff(meta_.receptive_hops, meta_.cutoff, 0.0); }
  const torch::Device &device() const { return device_; }
  std::string device_string() const { return device_.str(); }
  const std::string &path() const { return path_; }

  // Run the model on natoms atoms (species[i]: index into metadata().elements) and nedges
  // directed edges (edge_i[k] = centre, edge_j[k] = neighbour, full list, both directions),
  // edge_vec[3k..3k+2] = r_j - r_i in Angstrom. Atoms [0, nlocal) are the ones whose energies
  // count. With want_fij = false only energies are computed (no autograd graph).
  // Results stay valid until the next call: energy(), atom_energy(), fij().
  void compute(int64_t natoms, const int64_t *species, int64_t nedges, const int64_t *edge_i,
               const int64_t *edge_j, const double *edge_vec, int64_t nlocal,
               bool want_fij = true);

  // The same on owned atoms + ghosts one cutoff wide, for files with metadata.per_layer_exchange:
  // every edge has its centre edge_i[k] < nlocal; the model runs in pieces (embed, then
  // exchange + interact per layer, readout on owned atoms) and `exchange` fills ghost rows
  // between them (forward) and returns their gradients to the owners (backward: explicit,
  // piece by piece in reverse order, one reverse exchange per forward exchange). Every MPI rank must call it the same number of times, even
  // with nlocal = 0 or natoms = 0: the exchanges are collective. atom_energy() is valid for
  // [0, nlocal).
  void compute_halo(int64_t natoms, const int64_t *species, int64_t nedges, const int64_t *edge_i,
                    const int64_t *edge_j, const double *edge_vec, int64_t nlocal,
                    HaloExchanger &exchange, bool want_fij = true);
  // metadata says per-layer exchange and the file has the methods it needs
  bool supports_halo() const { return halo_methods_; }
  // compute_halo: keep no per-layer autograd graphs during the forward pass and run each piece
  // again in the backward pass (activation recomputation): peak memory about one layer's graph
  // instead of all layers', for ~1 more forward pass of compute. Same results.
  void set_recompute(bool on) { recompute_ = on; }
  bool recompute() const { return recompute_; }
  // exchanges done by the last compute_halo (forward, reverse)
  int64_t forward_exchanges() const { return n_forward_; }
  int64_t reverse_exchanges() const { return n_reverse_; }

  double energy() const { return energy_; }
  const double *atom_energy() const { return atom_energy_.data(); }  // [natoms]
  const double *fij() const { return fij_.data(); }                  // [nedges * 3]
  int64_t natoms() const { return natoms_; }
  int64_t nedges() const { return nedges_; }

  // The AOTInductor package (metadata aoti_package: one file name, or several separated by
  // commas, one per CPU thread count) runs compute() when it was found, matches this file
  // (fingerprint, dtype, device, CPU instruction set), was compiled for the current intra-op
  // thread count (at::get_num_threads(), checked at every compute(); package metadata
  // polyget.threads) and POLYGET_AOTI is not 0; the TorchScript model runs compute_halo() and
  // whatever the package cannot (fewer than 2 atoms or edges, another thread count: one line on
  // stderr says so). aoti_status() says which and why ("" until the constructor ran).
  bool uses_aoti() const { return aoti_ != nullptr; }
  const std::string &aoti_status() const { return aoti_status_; }
  // thread counts the usable packages were compiled for (0: any, "dynamic")
  std::vector<int> aoti_thread_counts() const;
  // (re)selects the package for the current thread count (compute() does it every call)
  void select_aoti();
  // seconds the constructor spent loading and warming up the model(s)
  double load_seconds() const { return load_seconds_; }

  // How many times the input/output buffers were (re)allocated; they only grow when the atom or
  // edge count exceeds every previous call's.
  int64_t num_allocations() const { return num_allocations_; }
  int64_t atom_capacity() const { return cap_atoms_; }
  int64_t edge_capacity() const { return cap_edges_; }

 private:
  void ensure_capacity(int64_t natoms, int64_t nedges);
  void check_inputs(int64_t natoms, const int64_t *species, int64_t nedges,
                    const int64_t *edge_i, const int64_t *edge_j, const double *edge_vec,
                    int64_t nlocal) const;
  void upload(int64_t natoms, const int64_t *species, int64_t nedges, const int64_t *edge_i,
              const int64_t *edge_j, const double *edge_vec, torch::Tensor &sp, torch::Tensor &ei,
              torch::Tensor &ev);
  void debug_dump(const torch::Tensor &species, const torch::Tensor &edge_index,
                  const torch::Tensor &edge_vec, int64_t nlocal);

  std::string path_;
  Metadata meta_;
  torch::Device device_;
  torch::ScalarType dtype_;
  torch::jit::Module module_;
  struct AotiPackage {
    std::string path;
    int threads = 0;                // CPU OpenMP threads compiled in; 0 = any (dynamic, CUDA)
    std::shared_ptr<void> loader;   // torch::inductor::AOTIModelPackageLoader, loaded on first use
    int64_t edge_multiple = 1;      // edge counts it takes (polyget.edge_multiple; padded here)
    double pad_length = 0.0;        // length of the padding edges (polyget.pad_length, > cutoff)
    bool mirrored = false;          // polyget.edge_layout mirrored: edges paired (mirror_edges)
  };
  std::vector<AotiPackage> aoti_pkgs_;  // packages that match this file (all thread counts)
  std::shared_ptr<void> aoti_;  // the loader for the current thread count, or null
  int64_t aoti_edge_multiple_ = 1;  // of the package in aoti_
  double aoti_pad_length_ = 0.0;
  bool aoti_mirrored_ = false;
  // the mirrored layout of the current call's edges (host; mirror_edges below)
  std::vector<int64_t> mir_index_, mir_slot_, mir_partner_, mir_start_, mir_by_i_;
  std::vector<double> mir_vec_, mir_fij_;
  int64_t mirror_edges(int64_t natoms, int64_t nedges, const int64_t *edge_i,
                       const int64_t *edge_j, const double *edge_vec);
  int aoti_for_threads_ = -1;   // at::get_num_threads() that aoti_ was selected for
  std::string aoti_base_status_;  // why no package at all (empty when some matched)
  std::string aoti_status_;
  double load_seconds_ = 0.0;
  torch::Tensor weight_buf_;  // [cap_atoms] model dtype: 1 for owned atoms, 0 for ghosts
  void load_aoti();
  void warm_up();
  bool run_aoti(int64_t natoms, int64_t nedges, int64_t nlocal, const torch::Tensor &sp,
                const torch::Tensor &ei, const torch::Tensor &ev, const int64_t *edge_i,
                const int64_t *edge_j, const double *edge_vec);
  bool halo_methods_ = false;
  bool recompute_ = false;
  int64_t n_forward_ = 0;
  int64_t n_reverse_ = 0;

  // device-side input buffers, sized to capacity; each call uses a leading slice
  int64_t cap_atoms_ = 0;
  int64_t cap_edges_ = 0;
  int64_t num_allocations_ = 0;
  torch::Tensor species_buf_;     // [cap_atoms] int64
  torch::Tensor edge_index_buf_;  // [2 * cap_edges] int64 (row i then row j, contiguous)
  torch::Tensor edge_vec_buf_;    // [cap_edges, 3] model dtype

  // host-side results
  int64_t natoms_ = 0;
  int64_t nedges_ = 0;
  double energy_ = 0.0;
  std::vector<double> atom_energy_;
  std::vector<double> fij_;

  // debugging: POLYGET_DEBUG=1 prints one line per call; POLYGET_DEBUG_DUMP=PREFIX writes the
  // model inputs of each call to PREFIX.<call>.pt (readable with torch.load)
  bool debug_ = false;
  std::string dump_prefix_;
  int64_t ncalls_ = 0;
};

}  // namespace polyget
