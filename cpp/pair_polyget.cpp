/* ----------------------------------------------------------------------
   polyget: LAMMPS pair style for exported polyget TorchScript models.

   The model is a message-passing network of cutoff rc whose energies reach receptive_hops edges
   (metadata "receptive_hops", default num_layers + 1: PolyGET's neighbour embedding is one hop
   before the num_layers attention layers). Exact results on any number of MPI ranks (the
   "halo" method of cpp/README.md): every rank holds ghost atoms out to receptive_hops * rc
   (+ skin; the rule lives in cpp/contract.h), runs the model on owned + ghost atoms with a
   full neighbour list that
   includes the ghosts' neighbours, sums the energies of its owned atoms only, and puts
   fij = d(E_owned)/d(r_j - r_i) on i and j; LAMMPS reverse-communicates the ghost forces.
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
#include <cmath>
#include <cstring>
#include <exception>

using namespace LAMMPS_NS;

static const char *const SYNTAX_STYLE =
    "expected: pair_style polyget NAME.jit.pt [device auto|cpu|cuda|cuda:N] [threads N] "
    "[ghosts auto|halo|fold] [min_distance A]";

/* ---------------------------------------------------------------------- */

PairPolyGET::PairPolyGET(LAMMPS *lmp) :
    Pair(lmp), device_request("auto"), nthreads_request(-1), cutoff(0.0), energy_scale(1.0),
    halo(0.0), min_distance(-1.0), min_distance_request(-1.0), ghost_mode(GHOSTS_AUTO),
    use_fold(false), map(nullptr)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;    // neighbours of ghost atoms: the model runs on the whole halo
  centroidstressflag = CENTROID_NOTAVAIL;
}

/* ---------------------------------------------------------------------- */

PairPolyGET::~PairPolyGET()
{
  if (copymode) return;
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

  // an empty subdomain has no energy and no forces to give
  if (nlocal == 0) {
    if (vflag_fdotr) virial_fdotr_compute();
    return;
  }

  check_min_distance();
  build_edges(use_fold);
  const int64_t natoms = static_cast<int64_t>(species.size());
  const int64_t nedges = static_cast<int64_t>(edge_i.size());

  // run the model; exceptions here can be rank-specific, so error->one (error->all would hang)
  try {
    model->compute(natoms, species.data(), nedges, edge_i.data(), edge_j.data(), edge_vec.data(),
                   nlocal, true);
  } catch (std::exception &e) {
    error->one(FLERR, std::string("pair_style polyget: model evaluation failed: ") + e.what());
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
   edges of the model graph, within the model cutoff, from the full neighbour list.
   halo mode (fold = false, any number of ranks): the model runs on owned + ghost atoms, with
   the neighbour lists of both (ghost atoms out to receptive_hops * cutoff).
   fold mode (fold = true, one rank): the model runs on owned atoms only; a neighbour that is a
   periodic image (ghost) is replaced by its owned original (atom map), keeping the image's
   edge vector. -fij still goes to the ghost image (force_j), so reverse comm and the fdotr
   virial stay right.
------------------------------------------------------------------------- */

void PairPolyGET::build_edges(bool fold)
{
  double **x = atom->x;
  const int *type = atom->type;
  const tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const int nnodes = fold ? nlocal : nlocal + atom->nghost;

  species.resize(nnodes);
  for (int i = 0; i < nnodes; i++) species[i] = map[type[i]];

  const int ncentres = fold ? list->inum : list->inum + list->gnum;
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
                            "original on this rank; use 'ghosts halo'", tag[j]);
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
      else if (strcmp(arg[iarg + 1], "halo") == 0)
        ghosts = GHOSTS_HALO;
      else if (strcmp(arg[iarg + 1], "fold") == 0)
        ghosts = GHOSTS_FOLD;
      else
        error->all(FLERR, std::string("pair_style polyget: ghosts must be auto, halo or fold, not '") +
                              arg[iarg + 1] + "'");
      iarg += 2;
    } else if (strcmp(arg[iarg], "min_distance") == 0) {
      if (iarg + 2 > narg)
        error->all(FLERR, std::string("pair_style polyget: min_distance needs a value in "
                                      "Angstrom (0 turns the check off); ") + SYNTAX_STYLE);
      mindist = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(mindist >= 0.0))
        error->all(FLERR, "pair_style polyget: min_distance must be >= 0 (Angstrom)");
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

  model.reset();
  try {
    model = std::make_unique<polyget::Model>(path, device, local_rank);
  } catch (std::exception &e) {
    model_error_all("cannot use '" + path + "'", e.what());
  }
  model_path = path;
  device_request = device;
  cutoff = model->metadata().cutoff;
  halo = model->interaction_range();
  min_distance_request = mindist;
  min_distance = mindist >= 0.0 ? mindist : model->metadata().min_distance;

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair_style polyget: {} (elements {}, cutoff {} A, {} layers, reach {} hops, "
                   "{}, format {}, min_distance {} A) on {}, {} torch thread(s) per rank\n",
                   path, model->metadata().elements_string(), cutoff,
                   model->metadata().num_layers, model->metadata().receptive_hops,
                   model->metadata().dtype, min_distance,
                   model->metadata().format_version, model->device_string(),
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

  // one rank with an atom map: fold periodic images onto owned atoms (model on N atoms only);
  // otherwise ghost atoms out to receptive_hops * cutoff with their own neighbour lists
  bool have_map = atom->map_style != Atom::MAP_NONE;
  if (!have_map && comm->nprocs == 1 && ghost_mode != GHOSTS_HALO) {
    // never fall back to the (receptive_hops x cutoff) ghost shell on one rank (10-100x
    // slower): create the atom map ourselves, as 'atom_modify map yes' would have
    if (!atom->tag_enable)
      error->all(FLERR, "pair_style polyget on one rank folds periodic images onto their atoms "
                        "by atom ID: atoms need IDs (atom_modify id yes)");
    atom->map_user = Atom::MAP_YES;
    atom->map_init();
    atom->map_set();
    have_map = true;
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style polyget: created an atom map (as 'atom_modify map yes') "
                          "to fold periodic images on one rank\n");
  }
  if (ghost_mode == GHOSTS_FOLD && comm->nprocs > 1)
    error->all(FLERR, "pair_style polyget: ghosts fold works on one MPI rank only; use ghosts halo "
                      "(or auto) with several ranks");
  if (ghost_mode == GHOSTS_FOLD && !have_map)
    error->all(FLERR, "pair_style polyget: ghosts fold needs an atom map: add 'atom_modify map yes' "
                      "before read_data/create_box");
  use_fold = (ghost_mode == GHOSTS_FOLD) ||
      (ghost_mode == GHOSTS_AUTO && comm->nprocs == 1 && have_map);

  if (use_fold) {
    ghostneigh = 0;
    neighbor->add_request(this, NeighConst::REQ_FULL);
    if (comm->me == 0)
      utils::logmesg(lmp, "pair_style polyget: one rank, periodic images folded onto owned atoms\n");
    return;
  }

  ghostneigh = 1;
  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // ghost atoms out to receptive_hops * cutoff (+ skin): set the comm cutoff if the user's is shorter
  const double need = polyget::halo_cutoff(model->metadata().receptive_hops, cutoff, neighbor->skin);
  if (comm->mode != Comm::SINGLE)
    error->all(FLERR, "pair_style polyget needs comm_modify mode single with a cutoff of at least "
                      "{:.6g} (receptive hops x cutoff + skin); use: comm_modify mode single cutoff {:.6g}",
               need, need);
  if (comm->cutghostuser < need) {
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style polyget: communication cutoff set to {:.6g} = {} hops x {} A "
                     "+ skin {} (ghost atoms for exact message passing across subdomains)\n",
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
