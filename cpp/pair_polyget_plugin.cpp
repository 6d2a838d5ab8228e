// LAMMPS plugin entry point: registers pair_style polyget, and replaces the creator of
// pair_style mliap by PairPolyGETMLIAP (upstream's, with pair_coeff checked first).
//   plugin load /path/to/polygetplugin.so      (or LAMMPS_PLUGIN_PATH, which .venv/bin/lmp sets)
#include "lammpsplugin.h"

#include <cstdlib>

#include "version.h"

#include "force.h"
#include "lammps.h"

#include "pair_polyget.h"
#ifdef POLYGET_WITH_MLIAP
#include "pair_polyget_mliap.h"
#endif

using namespace LAMMPS_NS;

static Pair *polyget_creator(LAMMPS *lmp)
{
  return new PairPolyGET(lmp);
}

#ifdef POLYGET_WITH_MLIAP
static Pair *mliap_checked_creator(LAMMPS *lmp)
{
  return new PairPolyGETMLIAP(lmp);
}
#endif

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
#if defined(__linux__)
  // Large tensors on transparent huge pages: libtorch's CPU allocator reads this variable at its
  // first allocation, which comes after this point (the model is loaded by pair_style). Fewer TLB
  // misses on the model's edge buffers: 0.967x the time per call, paper size, 360 atoms, 1 thread
  // (bench/README.md). A value the user set (THP_MEM_ALLOC_ENABLE=0) is kept.
  setenv("THP_MEM_ALLOC_ENABLE", "1", 0);
#endif
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;

  plugin.version = LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "polyget";
  plugin.info = "polyget machine-learned force field (libtorch C++ core) v0.1.0";
  plugin.author = "polyget developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &polyget_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);

#ifdef POLYGET_WITH_MLIAP
  // silently (no "Overriding built-in pair style" warning): only pair_coeff differs
  auto *pair_map = static_cast<LAMMPS *>(lmp)->force->pair_map;
  if (pair_map->find("mliap") != pair_map->end()) (*pair_map)["mliap"] = &mliap_checked_creator;
#endif
}
