/* -*- c++ -*- ----------------------------------------------------------
   polyget: LAMMPS pair style running an exported polyget TorchScript model

     pair_style polyget NAME.jit.pt [device auto|cpu|cuda|cuda:N] [threads N]
                        [ghosts auto|exchange|shell|fold] [min_distance A]
     pair_coeff * * <element of type 1> <element of type 2> ...

   Built as a plugin (cpp/pair_polyget_plugin.cpp); see README "LAMMPS".
------------------------------------------------------------------------- */

#ifndef LMP_PAIR_POLYGET_H
#define LMP_PAIR_POLYGET_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace polyget {
class Model;
}

namespace LAMMPS_NS {

class PairPolyGET : public Pair {
 public:
  PairPolyGET(class LAMMPS *);
  ~PairPolyGET() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  double memory_usage() override;

  // per-layer halo exchange of node features (comm->forward_comm / reverse_comm(this))
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // the arrays the current exchange moves: rows [nall, width] of one dtype (set by the
  // exchanger in pair_polyget.cpp around each comm call)
  struct ExchangeRows {
    void *data;
    int width;
  };
  std::vector<ExchangeRows> xrows;
  bool xrows_double = true;
  int xrows_width = 0;

 protected:
  void allocate();
  void build_edges(int mode);
  void check_min_distance();    // contract rule: stop on a pair closer than min_distance
  void check_positions();       // watchdog: non-finite coordinates of owned atoms
  void check_forces();          // watchdog: non-finite model output
  void check_bonds();           // watchdog: bonds of the start structure (bond_stretch > 0)
  [[noreturn]] void model_error_all(const std::string &where, const std::string &what);

  std::unique_ptr<polyget::Model> model;
  std::string model_path;
  std::string device_request;
  int nthreads_request;    // -1: LAMMPS's own thread count (OMP_NUM_THREADS / package omp)
  double cutoff;           // model cutoff (Angstrom)
  double energy_scale;     // model eV -> LAMMPS energy unit (1 for metal, kcal/mol per eV for real)
  double halo;             // receptive_hops * cutoff: the ghost shell of `ghosts shell`
  double min_distance;     // Angstrom; pairs closer stop the run (0: no check)
  double min_distance_request;    // the keyword's value, < 0 when not given
  enum { GHOSTS_AUTO, GHOSTS_EXCHANGE, GHOSTS_SHELL, GHOSTS_FOLD };
  int ghost_mode;          // requested
  int mode;                // chosen in init_style: GHOSTS_EXCHANGE, GHOSTS_SHELL or GHOSTS_FOLD
  int nexchange_calls;     // forward + reverse exchanges in the last compute (for checks)

  // stability watchdog (keywords bond_stretch R, bond_every N): bonds of the first computed
  // structure, replicated on every rank, keyed by the atom IDs (smaller first)
  double bond_stretch = 0.0;    // 0: off
  int bond_every = 1;
  bool bonds_built = false;
  struct TagPairHash {
    size_t operator()(const std::pair<tagint, tagint> &p) const
    {
      return std::hash<long long>()(static_cast<long long>(p.first) * 1000003LL ^
                                    static_cast<long long>(p.second));
    }
  };
  std::unordered_map<std::pair<tagint, tagint>, int, TagPairHash> bond_index;
  std::vector<tagint> bond_ti, bond_tj;
  std::vector<double> bond_r0, bond_rmin;
  std::vector<int> bond_touched, bond_li, bond_lj;    // bonds seen this check; local atoms

  // POLYGET_STATS=1: one line per rank at exit (graph sizes, model time, peak memory)
  bool stats;
  long long stat_calls, stat_max_nlocal, stat_max_nghost, stat_max_edges;
  double stat_model_s;
  double stat_base_rss_mb = 0.0;  // peak RSS before the model was loaded
  int *map;                // LAMMPS type -> model element index
  std::vector<std::string> type_elements;    // element of each type (for messages)

  // edge list buffers, reused every step (they only grow)
  std::vector<int64_t> species, edge_i, edge_j;
  std::vector<int> force_j;    // LAMMPS index that receives -fij (the ghost image in fold mode)
  std::vector<double> edge_vec;
};

}    // namespace LAMMPS_NS

#endif
