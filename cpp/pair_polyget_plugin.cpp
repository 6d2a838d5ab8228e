// LAMMPS plugin entry point: registers pair_style polyget.
//   plugin load /path/to/polygetplugin.so      (or LAMMPS_PLUGIN_PATH, which .venv/bin/lmp sets)
#include "lammpsplugin.h"

#include "version.h"

#include "pair_polyget.h"

using namespace LAMMPS_NS;

static Pair *polyget_creator(LAMMPS *lmp)
{
  return new PairPolyGET(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
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
}
