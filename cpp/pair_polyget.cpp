/* ----------------------------------------------------------------------
   polyget: LAMMPS pair style for exported polyget TorchScript models.

   The model is a message-passing network of cutoff rc: an atom's energy reaches
   receptive_hops = num_layers + 1 cutoffs. Three ways to get exact results on any number of
   MPI ranks (keyword `ghosts`):

   exchange (default for files with metadata per_layer_exchange): ghost atoms out to rc + skin
     only. The model runs in pieces (embed, interact per layer, readout); before every layer
     the node features of ghost atoms are filled from their owners with comm->forward_comm,
     and in the backward pass the gradients on ghost rows go back to the owners with
     comm->reverse_comm (a torch autograd function in core.cpp, so one backward pass). Each
     rank computes the rows of its own atoms only. On one rank the periodic images are the
     ghosts and the same exchange fills them: no atom map, no folding.
   shell: ghost atoms out to receptive_hops * rc + skin with their own neighbour lists; the
     whole model runs on owned + ghost atoms; energies of owned atoms are summed (the "first
     way"; exact, but the shell grows with the cube of the depth; the rule lives in
     cpp/contract.h).
   fold: one rank with an atom map; periodic images folded onto their owned originals.

   Forces: fij = dE/d(r_j - r_i) on i and j; LAMMPS reverse-communicates ghost forces.
------------------------------------------------------------------------- */

// torch headers before LAMMPS headers (LAMMPS defines short macros)
#include "core.h"

#include <ATen/Parallel.h>

#include "pair_polyget.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

using namespace LAMMPS_NS;

namespace {

// polyget::HaloExchanger over LAMMPS's ghost-atom swaps: forward_comm copies owned rows to
// ghost rows (relays included), reverse_comm adds ghost rows into their owners (core.cpp then
// zeroes the ghost rows). Rows are in LAMMPS atom order (owned, then ghosts), so the swap
// lists apply as they are.
class LammpsExchanger : public polyget::HaloExchanger {
 public:
  LammpsExchanger(PairPolyGET *pair, Comm *comm, int width) : pair_(pair), comm_(comm), width_(width) {}
  void forward(const std::vector<torch::Tensor> &rows) override
  {
    set(rows);
    comm_->forward_comm(pair_);
    ++calls;
  }
  void reverse(const std::vector<torch::Tensor> &rows) override
  {
    set(rows);
    comm_->reverse_comm(pair_);
    ++calls;
  }
  int calls = 0;

 private:
  void set(const std::vector<torch::Tensor> &rows)
  {
    pair_->xrows.clear();
    int width = 0;
    for (const auto &r : rows) {
      pair_->xrows_double = r.scalar_type() == torch::kFloat64;
      pair_->xrows.push_back({r.data_ptr(), static_cast<int>(r.size(1))});
      width += static_cast<int>(r.size(1));
    }
    // comm buffers were sized for comm_forward numbers per atom
    if (width > width_)
      throw polyget::ModelError("per-layer exchange of " + std::to_string(width) +
                                " numbers per atom, but metadata exchange_width is " +
                                std::to_string(width_) + "; re-export the model");
    pair_->xrows_width = width;
  }
  PairPolyGET *pair_;
  Comm *comm_;
  int width_;
};

template <typename T> int pack_rows(const std::vector<PairPolyGET::ExchangeRows> &rows, int n,
                                    const int *list, int first, double *buf)
{
  int m = 0;
  for (const auto &r : rows) {
    const T *d = static_cast<const T *>(r.data);
    const int w = r.width;
    for (int k = 0; k < n; k++) {
      const T *row = d + static_cast<int64_t>(list ? list[k] : first + k) * w;
      for (int c = 0; c < w; c++) buf[m++] = static_cast<double>(row[c]);
    }
  }
  return m;
}

template <typename T> void unpack_rows(const std::vector<PairPolyGET::ExchangeRows> &rows, int n,
                                       const int *list, int first, const double *buf, bool add)
{
  int m = 0;
  for (const auto &r : rows) {
    T *d = static_cast<T *>(r.data);
    const int w = r.width;
    for (int k = 0; k < n; k++) {
      T *row = d + static_cast<int64_t>(list ? list[k] : first + k) * w;
      if (add)
        for (int c = 0; c < w; c++) row[c] += static_cast<T>(buf[m++]);
      else
        for (int c = 0; c < w; c++) row[c] = static_cast<T>(buf[m++]);
    }
  }
}

// Peak resident memory of this process image in MB: VmHWM (reset by exec, unlike getrusage's
// ru_maxrss, which keeps the peak of the process that exec'd LAMMPS, e.g. a Python driver)
double peak_rss_mb()
{
  if (FILE *fh = std::fopen("/proc/self/status", "r")) {
    char line[256];
    double kb = -1.0;
    while (std::fgets(line, sizeof(line), fh))
      if (std::strncmp(line, "VmHWM:", 6) == 0) kb = std::atof(line + 6);
    std::fclose(fh);
    if (kb >= 0.0) return kb / 1024.0;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

}    // namespace

static const char *const SYNTAX_STYLE =
    "expected: pair_style polyget NAME.jit.pt [device auto|cpu|cuda|cuda:N] [threads N] "
    "[ghosts auto|exchange|shell|fold] [min_distance A] [recompute yes|no] "
    "[bond_stretch R] [bond_every N]";

/* ---------------------------------------------------------------------- */

PairPolyGET::PairPolyGET(LAMMPS *lmp) :
    Pair(lmp), device_request("auto"), nthreads_request(-1), cutoff(0.0), energy_scale(1.0),
    halo(0.0), min_distance(-1.0), min_distance_request(-1.0), ghost_mode(GHOSTS_AUTO),
    mode(GHOSTS_SHELL), nexchange_calls(0), stats(false), stat_calls(0), stat_max_nlocal(0),
    stat_max_nghost(0), stat_max_edges(0), stat_model_s(0.0), map(nullptr)
{
  const char *st = std::getenv("POLYGET_STATS");
  stats = st && std::string(st) != "0" && std::string(st) != "";
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 0;    // set in init_style (1 for ghosts shell)
  comm_forward = comm_reverse = 0;    // set in init_style (per-layer exchange width)
  centroidstressflag = CENTROID_NOTAVAIL;
}

/* ---------------------------------------------------------------------- */

PairPolyGET::~PairPolyGET()
{
  if (copymode) return;
  if (stats && stat_calls > 0) {
    static const char *names[] = {"auto", "exchange", "shell", "fold"};
    std::fprintf(stderr,
                 "polyget stats: rank %d mode %s calls %lld max_nlocal %lld max_nghost %lld "
                 "max_edges %lld model_s %.6f peak_rss_mb %.1f base_rss_mb %.1f\n",
                 comm->me, names[mode], stat_calls, stat_max_nlocal, stat_max_nghost,
                 stat_max_edges, stat_model_s, peak_rss_mb(), stat_base_rss_mb);
    std::fflush(stderr);
  }
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
    memory->destroy(map);
  }
}

/* ---------------------------------------------------------------------- */

void PairPolyGET::model_error_all(const std::string &where, const std::string &what)
{
  error->all(FLERR, "pair_style polyget " + where + ": " + what);
}

/* ----------------------------------------------------------------------
   compute
------------------------------------------------------------------------- */

void PairPolyGET::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  double **f = atom->f;
  const int nlocal = atom->nlocal;

  // watchdog (before the early return below: the bond check is collective)
  check_positions();
  if (bond_stretch > 0.0 && (!bonds_built || update->ntimestep % bond_every == 0)) check_bonds();

  // an empty subdomain has no energy and no forces to give; with per-layer exchange it still
  // takes part in every exchange (they are collective, and it may relay ghosts)
  if (nlocal == 0 && mode != GHOSTS_EXCHANGE) {
    if (vflag_fdotr) virial_fdotr_compute();
    return;
  }

  check_min_distance();
  build_edges(mode);
  const int64_t natoms = static_cast<int64_t>(species.size());
  const int64_t nedges = static_cast<int64_t>(edge_i.size());

  // run the model; exceptions here can be rank-specific, so error->one (error->all would hang)
  const auto t0 = std::chrono::steady_clock::now();
  try {
    if (mode == GHOSTS_EXCHANGE) {
      LammpsExchanger ex(this, comm, comm_forward);
      model->compute_halo(natoms, species.data(), nedges, edge_i.data(), edge_j.data(),
                          edge_vec.data(), nlocal, ex, true);
      nexchange_calls = ex.calls;
    } else {
      model->compute(natoms, species.data(), nedges, edge_i.data(), edge_j.data(),
                     edge_vec.data(), nlocal, true);
    }
  } catch (std::exception &e) {
    error->one(FLERR, std::string("pair_style polyget: model evaluation failed: ") + e.what());
  }
  check_forces();
  if (stats) {
    stat_model_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++stat_calls;
    stat_max_nlocal = std::max<long long>(stat_max_nlocal, nlocal);
    stat_max_nghost = std::max<long long>(stat_max_nghost, natoms - nlocal);
    stat_max_edges = std::max<long long>(stat_max_edges, nedges);
  }

  // forces: F_i += fij, F_j -= fij  (fij = dE/d(r_j - r_i)); ghost forces go back by reverse comm
  // (times energy_scale: eV -> the LAMMPS energy unit)
  const double scale = energy_scale;
  const double *fij = model->fij();
  for (int64_t k = 0; k < nedges; k++) {
    const int i = static_cast<int>(edge_i[k]);
    const int j = force_j[k];
    const double *g = fij + 3 * k;
    f[i][0] += scale * g[0];
    f[i][1] += scale * g[1];
    f[i][2] += scale * g[2];
    f[j][0] -= scale * g[0];
    f[j][1] -= scale * g[1];
    f[j][2] -= scale * g[2];
  }

  if (eflag_global) eng_vdwl += scale * model->energy();
  if (eflag_atom) {
    const double *ae = model->atom_energy();
    for (int i = 0; i < nlocal; i++) eatom[i] += scale * ae[i];
  }

  // virial: global by fdotr over owned + ghost atoms (or explicitly), per-atom explicitly;
  // the pair virial is -r_ij (x) fij, split half/half between i and j
  if (vflag_fdotr) virial_fdotr_compute();
  if ((vflag_global && !vflag_fdotr) || vflag_atom) {
    for (int64_t k = 0; k < nedges; k++) {
      const double *r = edge_vec.data() + 3 * k;
      const double *g = fij + 3 * k;
      const double v[6] = {-scale * r[0] * g[0], -scale * r[1] * g[1], -scale * r[2] * g[2],
                           -scale * r[0] * g[1], -scale * r[0] * g[2], -scale * r[1] * g[2]};
      if (vflag_global && !vflag_fdotr)
        for (int c = 0; c < 6; c++) virial[c] += v[c];
      if (vflag_atom) {
        const int i = static_cast<int>(edge_i[k]);
        const int j = force_j[k];
        for (int c = 0; c < 6; c++) {
          vatom[i][c] += 0.5 * v[c];
          vatom[j][c] += 0.5 * v[c];
        }
      }
    }
  }
}

/* ----------------------------------------------------------------------
   minimum distance (cpp/contract.h): any pair of an owned atom closer than min_distance stops
   the run with the atom IDs and the step. Rank-specific, hence error->one.
------------------------------------------------------------------------- */

void PairPolyGET::check_min_distance()
{
  if (!(min_distance > 0.0)) return;
  double **x = atom->x;
  const tagint *tag = atom->tag;
  const double thr2 = min_distance * min_distance;
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  double best = thr2;
  int bi = -1, bj = -1;
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= atom->nlocal) continue;
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double r2 = dx * dx + dy * dy + dz * dz;
      if (r2 < best) {
        best = r2;
        bi = i;
        bj = j;
      }
    }
  }
  if (bi >= 0) {
    const tagint ti = tag[bi], tj = tag[bj];
    error->one(FLERR, polyget::min_distance_message(update->ntimestep, std::min(ti, tj),
                                                    std::max(ti, tj), std::sqrt(best),
                                                    min_distance,
                                                    polyget::kPairMinDistanceOverride));
  }
}

/* ----------------------------------------------------------------------
   watchdog: non-finite coordinates and model output stop the run with the step and the atom
   (rank-specific, hence error->one); cost O(atoms + edges), against the model's O(edges x F^2)
------------------------------------------------------------------------- */

void PairPolyGET::check_positions()
{
  double **x = atom->x;
  for (int i = 0; i < atom->nlocal; i++)
    if (!(std::isfinite(x[i][0]) && std::isfinite(x[i][1]) && std::isfinite(x[i][2])))
      error->one(FLERR, polyget::nonfinite_message(update->ntimestep, "position", atom->tag[i],
                                                   type_elements[atom->type[i]]));
}

void PairPolyGET::check_forces()
{
  const double *g = model->fij();
  const int64_t n = static_cast<int64_t>(edge_i.size());
  double sum = 0.0;    // one pass: a NaN or inf anywhere makes the sum non-finite
  for (int64_t k = 0; k < 3 * n; k++) sum += g[k];
  if (std::isfinite(sum) && std::isfinite(model->energy())) return;
  int bad = edge_i.empty() ? 0 : static_cast<int>(edge_i[0]);
  for (int64_t k = 0; k < n; k++)
    if (!(std::isfinite(g[3 * k]) && std::isfinite(g[3 * k + 1]) && std::isfinite(g[3 * k + 2]))) {
      bad = static_cast<int>(edge_i[k]);
      break;
    }
  error->one(FLERR, polyget::nonfinite_message(update->ntimestep, "force or energy from the model",
                                               atom->tag[bad], type_elements[atom->type[bad]]));
}

/* ----------------------------------------------------------------------
   watchdog: bonds of the start structure (pairs closer than kBondFactor x the sum of covalent
   radii at the first computed step) must stay shorter than bond_stretch x their start length.
   The bond list is gathered on every rank (a few numbers per atom); each bond is checked on the
   rank that owns its lower-ID atom, over that atom's neighbour list. A bond whose atoms are no
   longer within reach of each other is missing from every list: the ranks count the bonds they
   found (collective), and a shortfall is reported with its atoms.
------------------------------------------------------------------------- */

void PairPolyGET::check_bonds()
{
  double **x = atom->x;
  const tagint *tag = atom->tag;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int ntypes = atom->ntypes;
  std::vector<double> rcov(ntypes + 1, 0.0);
  for (int t = 1; t <= ntypes; t++) rcov[t] = polyget::covalent_radius(type_elements[t]);
  // fn(i, j, r2) for every neighbour j of an owned atom i with the higher atom ID
  auto each_pair = [&](auto &&fn) {
    for (int ii = 0; ii < list->inum; ii++) {
      const int i = list->ilist[ii];
      if (i >= nlocal) continue;
      const int *jlist = list->firstneigh[i];
      for (int jj = 0; jj < list->numneigh[i]; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        if (tag[j] <= tag[i]) continue;
        const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
        fn(i, j, dx * dx + dy * dy + dz * dz);
      }
    }
  };

  if (!bonds_built) {
    std::vector<double> mine;    // (tag_i, tag_j, r0) triples; tags are exact in a double < 2^53
    each_pair([&](int i, int j, double r2) {
      const double rc = polyget::kBondFactor * (rcov[type[i]] + rcov[type[j]]);
      if (rcov[type[i]] > 0.0 && rcov[type[j]] > 0.0 && r2 < rc * rc) {
        mine.push_back(static_cast<double>(tag[i]));
        mine.push_back(static_cast<double>(tag[j]));
        mine.push_back(std::sqrt(r2));
      }
    });
    int n = static_cast<int>(mine.size());
    std::vector<int> counts(comm->nprocs), displs(comm->nprocs, 0);
    MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, world);
    for (int p = 1; p < comm->nprocs; p++) displs[p] = displs[p - 1] + counts[p - 1];
    std::vector<double> all(displs.back() + counts.back());
    MPI_Allgatherv(mine.data(), n, MPI_DOUBLE, all.data(), counts.data(), displs.data(),
                   MPI_DOUBLE, world);
    bond_index.clear();
    bond_ti.clear();
    bond_tj.clear();
    bond_r0.clear();
    for (size_t k = 0; k + 2 < all.size(); k += 3) {
      const auto key = std::make_pair(static_cast<tagint>(all[k]), static_cast<tagint>(all[k + 1]));
      auto it = bond_index.find(key);
      if (it != bond_index.end()) {    // a periodic image of the same pair: keep the nearest
        bond_r0[it->second] = std::min(bond_r0[it->second], all[k + 2]);
        continue;
      }
      bond_index.emplace(key, static_cast<int>(bond_ti.size()));
      bond_ti.push_back(key.first);
      bond_tj.push_back(key.second);
      bond_r0.push_back(all[k + 2]);
    }
    bond_rmin.assign(bond_r0.size(), -1.0);
    bond_li.assign(bond_r0.size(), -1);
    bond_lj.assign(bond_r0.size(), -1);
    bonds_built = true;
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style polyget: watchdog: {} bonds of this structure (pairs within "
                          "{} x the covalent radii) must stay below {} x their length (checked "
                          "every {} step(s)); non-finite positions and forces stop the run\n",
                     bond_r0.size(), polyget::kBondFactor, bond_stretch, bond_every);
    return;
  }

  // nearest image of each bond this rank holds (its lower-ID atom is owned here), over the
  // whole neighbour list: a bond past the limit is reported with its length while its atoms
  // are within the list's reach (cutoff + skin)
  bond_touched.clear();
  each_pair([&](int i, int j, double r2) {
    auto it = bond_index.find(std::make_pair(tag[i], tag[j]));
    if (it == bond_index.end()) return;
    const int b = it->second;
    const double r = std::sqrt(r2);
    if (bond_rmin[b] < 0.0) bond_touched.push_back(b);
    if (bond_rmin[b] < 0.0 || r < bond_rmin[b]) {
      bond_rmin[b] = r;
      bond_li[b] = i;
      bond_lj[b] = j;
    }
  });
  int worst = -1;
  double worst_ratio = bond_stretch;
  for (int b : bond_touched)
    if (bond_rmin[b] / bond_r0[b] > worst_ratio) {
      worst_ratio = bond_rmin[b] / bond_r0[b];
      worst = b;
    }
  const double worst_r = worst >= 0 ? bond_rmin[worst] : 0.0;
  const int nfound = static_cast<int>(bond_touched.size());
  for (int b : bond_touched) bond_rmin[b] = -1.0;
  int ntotal = 0;
  MPI_Allreduce(&nfound, &ntotal, 1, MPI_INT, MPI_SUM, world);
  if (worst >= 0)
    error->one(FLERR, polyget::bond_stretch_message(update->ntimestep, bond_ti[worst],
                                                    type_elements[type[bond_li[worst]]],
                                                    bond_tj[worst],
                                                    type_elements[type[bond_lj[worst]]], worst_r,
                                                    bond_r0[worst], bond_stretch));
  if (ntotal < static_cast<int>(bond_r0.size())) {
    // which bond: the flags of the found ones, combined over the ranks (rare path)
    std::vector<int> seen(bond_r0.size(), 0), any(bond_r0.size(), 0);
    for (int b : bond_touched) seen[b] = 1;
    MPI_Allreduce(seen.data(), any.data(), static_cast<int>(seen.size()), MPI_INT, MPI_MAX, world);
    size_t b = 0;
    while (b < any.size() && any[b]) ++b;
    if (b == any.size()) b = 0;
    error->all(FLERR, polyget::bond_stretch_message(update->ntimestep, bond_ti[b], "", bond_tj[b],
                                                    "", -1.0, bond_r0[b], bond_stretch));
  }
}

/* ----------------------------------------------------------------------
   edges of the model graph, within the model cutoff, from the full neighbour list.
   exchange: nodes = owned + ghost atoms (LAMMPS order), edges from owned atoms only; ghost
     rows are filled by the per-layer exchange.
   shell: nodes = owned + ghost atoms, edges from both (neighbour lists of ghosts, out to
     receptive_hops * cutoff).
   fold (one rank): nodes = owned atoms; a neighbour that is a periodic image (ghost) is
     replaced by its owned original (atom map), keeping the image's edge vector. -fij still goes
     to the ghost image (force_j), so reverse comm and the fdotr virial stay right.
------------------------------------------------------------------------- */

void PairPolyGET::build_edges(int how)
{
  double **x = atom->x;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const bool fold = how == GHOSTS_FOLD;
  const int nnodes = fold ? nlocal : nlocal + atom->nghost;

  species.resize(nnodes);
  for (int i = 0; i < nnodes; i++) species[i] = map[type[i]];

  const int ncentres = (how == GHOSTS_SHELL) ? list->inum + list->gnum : list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double cutsq_model = cutoff * cutoff;

  edge_i.clear();
  edge_j.clear();
  force_j.clear();
  edge_vec.clear();
  for (int ii = 0; ii < ncentres; ii++) {
    const int i = ilist[ii];
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - xi;
      const double dy = x[j][1] - yi;
      const double dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz >= cutsq_model) continue;
      int jnode = j;
      if (fold && j >= nlocal) {
        jnode = atom->map(tag[j]);
        if (jnode < 0 || jnode >= nlocal)
          error->one(FLERR, "pair_style polyget (ghosts fold): ghost atom {} has no owned "
                            "original on this rank; use 'ghosts exchange'", tag[j]);
      }
      edge_i.push_back(i);
      edge_j.push_back(jnode);
      force_j.push_back(j);
      edge_vec.push_back(dx);
      edge_vec.push_back(dy);
      edge_vec.push_back(dz);
    }
  }
}

/* ----------------------------------------------------------------------
   per-layer exchange: pack/unpack the rows set by LammpsExchanger (no periodic shift: node
   features are invariant under translation)
------------------------------------------------------------------------- */

int PairPolyGET::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  return xrows_double ? pack_rows<double>(xrows, n, list, 0, buf)
                      : pack_rows<float>(xrows, n, list, 0, buf);
}

void PairPolyGET::unpack_forward_comm(int n, int first, double *buf)
{
  if (xrows_double)
    unpack_rows<double>(xrows, n, nullptr, first, buf, false);
  else
    unpack_rows<float>(xrows, n, nullptr, first, buf, false);
}

int PairPolyGET::pack_reverse_comm(int n, int first, double *buf)
{
  return xrows_double ? pack_rows<double>(xrows, n, nullptr, first, buf)
                      : pack_rows<float>(xrows, n, nullptr, first, buf);
}

void PairPolyGET::unpack_reverse_comm(int n, int *list, double *buf)
{
  if (xrows_double)
    unpack_rows<double>(xrows, n, list, 0, buf, true);
  else
    unpack_rows<float>(xrows, n, list, 0, buf, true);
}

/* ----------------------------------------------------------------------
   allocate all arrays
------------------------------------------------------------------------- */

void PairPolyGET::allocate()
{
  allocated = 1;
  int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  memory->create(cutghost, n + 1, n + 1, "pair:cutghost");
  memory->create(map, n + 1, "pair:map");
  for (int i = 0; i <= n; i++) map[i] = -1;
}

/* ----------------------------------------------------------------------
   settings: pair_style polyget NAME.jit.pt [device D] [threads N]
------------------------------------------------------------------------- */

void PairPolyGET::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, std::string("Illegal pair_style polyget command: ") + SYNTAX_STYLE);

  std::string path = arg[0];
  std::string device = "auto";
  int nthreads = -1;
  int ghosts = GHOSTS_AUTO;
  double mindist = -1.0;    // < 0: the model's metadata min_distance
  bool recompute = false;
  double stretch = 0.0;
  int every = 1;
  int iarg = 1;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "device") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: device needs a value; ") + SYNTAX_STYLE);
      device = arg[iarg + 1];
      iarg += 2;
    } else if (strcmp(arg[iarg], "threads") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: threads needs a value; ") + SYNTAX_STYLE);
      nthreads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (nthreads < 1) error->all(FLERR, "pair_style polyget: threads must be >= 1");
      iarg += 2;
    } else if (strcmp(arg[iarg], "ghosts") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: ghosts needs a value; ") + SYNTAX_STYLE);
      if (strcmp(arg[iarg + 1], "auto") == 0)
        ghosts = GHOSTS_AUTO;
      else if (strcmp(arg[iarg + 1], "exchange") == 0)
        ghosts = GHOSTS_EXCHANGE;
      else if (strcmp(arg[iarg + 1], "shell") == 0 || strcmp(arg[iarg + 1], "halo") == 0)
        ghosts = GHOSTS_SHELL;    // "halo": this mode's name before per-layer exchange existed
      else if (strcmp(arg[iarg + 1], "fold") == 0)
        ghosts = GHOSTS_FOLD;
      else
        error->all(FLERR, std::string("pair_style polyget: ghosts must be auto, exchange, shell "
                                      "or fold, not '") + arg[iarg + 1] + "'");
      iarg += 2;
    } else if (strcmp(arg[iarg], "min_distance") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: min_distance needs a value in "
                                      "Angstrom (0 turns the check off); ") + SYNTAX_STYLE);
      mindist = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(mindist >= 0.0))
        error->all(FLERR, "pair_style polyget: min_distance must be >= 0 (Angstrom)");
      iarg += 2;
    } else if (strcmp(arg[iarg], "recompute") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: recompute needs yes or no; ") + SYNTAX_STYLE);
      recompute = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
      iarg += 2;
    } else if (strcmp(arg[iarg], "bond_stretch") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: bond_stretch needs a ratio (e.g. 1.6; "
                                      "0 turns the watchdog off); ") + SYNTAX_STYLE);
      stretch = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(stretch == 0.0 || stretch > 1.0))
        error->all(FLERR, "pair_style polyget: bond_stretch must be 0 (off) or a ratio > 1 of "
                          "the start bond length, e.g. 1.6");
      iarg += 2;
    } else if (strcmp(arg[iarg], "bond_every") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: bond_every needs a number of steps; ") +
                              SYNTAX_STYLE);
      every = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (every < 1) error->all(FLERR, "pair_style polyget: bond_every must be >= 1 (steps)");
      iarg += 2;
    } else {
      error->all(FLERR, std::string("pair_style polyget: unknown keyword '") + arg[iarg] + "'; " +
                            SYNTAX_STYLE);
    }
  }

  // node-local rank picks the GPU (rank mod GPU count) when there are several
  int local_rank = -1;
#ifdef POLYGET_HAVE_MPI
  if (comm->nprocs > 1) {
    MPI_Comm node;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
  }
#endif

  // torch intra-op threads per rank: `threads N`, else LAMMPS's (OMP_NUM_THREADS, default 1)
  nthreads_request = nthreads;
  ghost_mode = ghosts;
  at::set_num_threads(nthreads > 0 ? nthreads : std::max(1, comm->nthreads));

  // glibc serves every allocation above 32 MB with a fresh mmap and returns it on free, so each
  // step of a large system page-faults its whole autograd graph in again (1e4-atom melt, paper
  // depth, 1 rank: 32.7 s/step, most of it system time, vs 6.7 s with this). Keep freed memory
  // in the heap for reuse instead (the resident size stays at the peak of one step).
  // POLYGET_MALLOC=system leaves glibc's defaults.
#if defined(__GLIBC__)
  {
    const char *mc = std::getenv("POLYGET_MALLOC");
    if (!(mc && std::string(mc) == "system")) {
      mallopt(M_MMAP_MAX, 0);
      mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
  }
#endif
  // peak memory before the model is loaded: libraries, LAMMPS and its atoms
  if (stats) stat_base_rss_mb = peak_rss_mb();

  model.reset();
  try {
    model = std::make_unique<polyget::Model>(path, device, local_rank);
  } catch (std::exception &e) {
    model_error_all("cannot use '" + path + "'", e.what());
  }
  model->set_recompute(recompute);
  model_path = path;
  device_request = device;
  cutoff = model->metadata().cutoff;
  halo = model->interaction_range();
  min_distance_request = mindist;
  min_distance = mindist >= 0.0 ? mindist : model->metadata().min_distance;
  bond_stretch = stretch;
  bond_every = every;
  bonds_built = false;    // the next computed structure gives the reference bonds

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style polyget: {} (elements {}, cutoff {} A, {} layers, reach {} hops, "
                   "{}, format {}, min_distance {} A) on {}, {} torch thread(s) per rank\n",
                   path, model->metadata().elements_string(), cutoff,
                   model->metadata().num_layers, model->metadata().receptive_hops,
                   model->metadata().dtype, model->metadata().format_version, min_distance,
                   model->device_string(),
                   at::get_num_threads());

  // a new model invalidates earlier pair_coeff mappings
  if (allocated) {
    int n = atom->ntypes;
    for (int i = 1; i <= n; i++) {
      map[i] = -1;
      for (int j = i; j <= n; j++) setflag[i][j] = 0;
    }
  }
}

/* ----------------------------------------------------------------------
   coeff: pair_coeff * * <element per type>
------------------------------------------------------------------------- */

void PairPolyGET::coeff(int narg, char **arg)
{
  if (!model) error->all(FLERR, "pair_coeff before pair_style polyget NAME.jit.pt");
  if (!allocated) allocate();

  const auto &meta = model->metadata();
  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style polyget: expected: pair_coeff * * <element per "
                      "atom type> (model elements: " + meta.elements_string() + ")");
  const std::vector<std::string> given(arg + 2, arg + narg);
  const std::string problem = polyget::check_elements_for_types(ntypes, given, meta);
  if (!problem.empty()) error->all(FLERR, problem + " (model " + model_path + ")");

  type_elements.assign(ntypes + 1, "");
  for (int t = 1; t <= ntypes; t++) {
    map[t] = meta.element_index(given[t - 1]);
    type_elements[t] = given[t - 1];
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

/* ----------------------------------------------------------------------
   init_style: newton on, metal units, full neighbour list with ghost neighbours, halo
------------------------------------------------------------------------- */

void PairPolyGET::init_style()
{
  if (!model) error->all(FLERR, "pair_style polyget: no model loaded");
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style polyget requires newton pair on (ghost-atom forces are "
                      "reverse-communicated): use 'newton on' (the default), not 'newton off'");
  // units and special_bonds: the rules of cpp/contract.h (same as the ML-IAP path)
  energy_scale = polyget::lammps_energy_factor(update->unit_style);
  if (energy_scale < 0.0) error->all(FLERR, polyget::units_message(update->unit_style));
  if (atom->molecular != Atom::ATOMIC &&
      polyget::special_bonds_drop_pairs(atom->nbonds, force->special_lj, force->special_coul))
    error->all(FLERR, polyget::special_bonds_message());

  // choose how ghost atoms are handled (see the top of this file)
  const auto &meta = model->metadata();
  bool have_map = atom->map_style != Atom::MAP_NONE;
  if (ghost_mode == GHOSTS_EXCHANGE && !model->supports_halo())
    error->all(FLERR, "pair_style polyget: ghosts exchange needs a model file exported with "
                      "per-layer exchange (metadata num_exchanges); " + model_path +
                      " was exported by an older polyget: re-export it with python/export.py, "
                      "or use ghosts shell");
  // a file without per-layer exchange on one rank: fold periodic images onto their atoms,
  // never fall back to the (receptive_hops x cutoff) ghost shell (10-100x slower); create the
  // atom map for that ourselves, as 'atom_modify map yes' would have
  // The same on one rank with the compiled (AOTInductor) model, which runs the whole graph in
  // one call (auto picks fold below): without the map, auto fell back to the TorchScript pieces
  // of the per-layer exchange, 4x slower on the 15-loop, while the log named the package.
  const bool whole_graph = comm->nprocs == 1 && model->uses_aoti() && !model->recompute();
  const bool fold_wanted = ghost_mode == GHOSTS_FOLD ||
      (ghost_mode == GHOSTS_AUTO && comm->nprocs == 1 && (!model->supports_halo() || whole_graph));
  if (fold_wanted && !have_map && comm->nprocs == 1) {
    if (!atom->tag_enable)
      error->all(FLERR, "pair_style polyget on one rank folds periodic images onto their atoms "
                        "by atom ID: atoms need IDs (atom_modify id yes)");
    atom->map_user = Atom::MAP_YES;
    atom->map_init();
    atom->map_set();
    have_map = true;
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style polyget: created an atom map (as 'atom_modify map yes') "
                          "to run the whole graph on one rank\n");
  }
  if (ghost_mode == GHOSTS_FOLD && comm->nprocs > 1)
    error->all(FLERR, "pair_style polyget: ghosts fold works on one MPI rank only; use ghosts "
                      "exchange (or auto) with several ranks");
  if (ghost_mode == GHOSTS_FOLD && !have_map)
    error->all(FLERR, "pair_style polyget: ghosts fold needs an atom map: add 'atom_modify map yes' "
                      "before read_data/create_box");
  if (ghost_mode == GHOSTS_AUTO)
    // one rank with the compiled (AOTInductor) model: the whole periodic graph in one call of
    // the package (fold) is faster than TorchScript pieces with per-layer exchange (an exact
    // 3-layer package: 1.9x in CPU time, bench/README.md)
    // (recompute asks for the pieces: the package holds the whole graph)
    mode = (whole_graph && have_map) ? GHOSTS_FOLD
        : model->supports_halo() ? GHOSTS_EXCHANGE
        : (comm->nprocs == 1 && have_map) ? GHOSTS_FOLD : GHOSTS_SHELL;
  else
    mode = ghost_mode;
  if (model->recompute() && mode != GHOSTS_EXCHANGE)
    error->all(FLERR, "pair_style polyget: recompute yes works with the per-layer exchange only "
                      "(ghosts auto or exchange, and a model file exported with per-layer exchange)");
  if (comm->me == 0) {
    // what the steps run: the package does whole-graph calls (fold, shell); the per-layer
    // exchange runs the TorchScript pieces whatever was loaded
    const std::string runs = mode == GHOSTS_EXCHANGE
        ? std::string("TorchScript pieces with per-layer exchange (ghosts exchange") +
              (model->uses_aoti() ? "; the AOTInductor package is not used by this mode)" : ")")
        : model->aoti_status();
    utils::logmesg(lmp, "pair_style polyget: model runs as {} (loaded in {:.2f} s)\n", runs,
                   model->load_seconds());
  }

  comm_forward = comm_reverse = 0;
  if (mode == GHOSTS_FOLD) {
    ghostneigh = 0;
    neighbor->add_request(this, NeighConst::REQ_FULL);
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style polyget: ghosts fold: one rank, periodic images folded "
                          "onto owned atoms\n");
    return;
  }

  if (mode == GHOSTS_EXCHANGE) {
    // ghost atoms out to cutoff + skin (LAMMPS's default comm cutoff); node features of
    // ghosts come from their owners before every layer
    if (comm->style != Comm::BRICK && comm->style != Comm::TILED)
      error->all(FLERR, "pair_style polyget: ghosts exchange needs comm_style brick or tiled");
    ghostneigh = 0;
    neighbor->add_request(this, NeighConst::REQ_FULL);
    comm_forward = comm_reverse = meta.exchange_width;
    const double need = cutoff + neighbor->skin;
    if (comm->me == 0) {
      utils::logmesg(lmp,
                     "pair_style polyget: ghosts exchange: ghost atoms out to {:.6g} A (cutoff "
                     "{} + skin {}), node features exchanged {} times per step ({} numbers per "
                     "atom)\n",
                     need, cutoff, neighbor->skin, meta.num_exchanges, meta.exchange_width);
    if (comm->me == 0 && model->recompute())
      utils::logmesg(lmp, "pair_style polyget: recompute yes: each layer is run again in the "
                          "backward pass (about one layer's autograd memory instead of {})\n",
                     meta.num_layers);
      if (comm->cutghostuser > need + 1e-6)
        utils::logmesg(lmp,
                       "pair_style polyget: note: comm_modify cutoff {:.6g} is more than the "
                       "{:.6g} A per-layer exchange needs; the extra ghost atoms only cost "
                       "time and memory (remove comm_modify cutoff)\n",
                       comm->cutghostuser, need);
    }
    return;
  }

  ghostneigh = 1;
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // ghost atoms out to receptive_hops * cutoff (+ skin): set the comm cutoff if the user's is shorter
  const double need = polyget::halo_cutoff(model->metadata().receptive_hops, cutoff, neighbor->skin);
  if (comm->mode != Comm::SINGLE)
    error->all(FLERR, "pair_style polyget ghosts shell needs comm_modify mode single with a "
                      "cutoff of at least {:.6g} (receptive hops x cutoff + skin); use: "
                      "comm_modify mode single cutoff {:.6g}", need, need);
  if (comm->cutghostuser < need) {
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style polyget: ghosts shell: communication cutoff set to {:.6g} = {} "
                     "hops x {} A + skin {} (ghost atoms for the whole receptive field)\n",
                     need, model->metadata().receptive_hops, cutoff, neighbor->skin);
    comm->cutghostuser = need;
  }
}

/* ----------------------------------------------------------------------
   init_one: the model cutoff for every type pair
------------------------------------------------------------------------- */

double PairPolyGET::init_one(int i, int j)
{
  if (setflag[i][j] == 0)
    error->all(FLERR, "pair_style polyget: pair_coeff not set; expected: pair_coeff * * "
                      "<element per type> (model elements: " + model->metadata().elements_string() + ")");
  if (cutghost) cutghost[i][j] = cutghost[j][i] = cutoff;
  return cutoff;
}

/* ---------------------------------------------------------------------- */

double PairPolyGET::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) species.capacity() * sizeof(int64_t);
  bytes += (double) (edge_i.capacity() + edge_j.capacity()) * sizeof(int64_t);
  bytes += (double) force_j.capacity() * sizeof(int);
  bytes += (double) edge_vec.capacity() * sizeof(double);
  return bytes;
}
