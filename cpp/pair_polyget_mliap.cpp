// polyget: checked pair_coeff for `pair_style mliap` (see pair_polyget_mliap.h).
#include "contract.h"

#include "pair_polyget_mliap.h"

#include "atom.h"
#include "error.h"
#include "mliap_descriptor.h"

#include <cstring>
#include <string>
#include <vector>

using namespace LAMMPS_NS;

void PairPolyGETMLIAP::coeff(int narg, char **arg)
{
  const int ntypes = atom->ntypes;
  // polyget's ML-IAP model declares every element symbol, H .. Og (polyget.lammps.mliap)
  const bool polyget_model = descriptor && descriptor->nelements == 118 &&
      descriptor->elements && strcmp(descriptor->elements[0], "H") == 0 &&
      strcmp(descriptor->elements[117], "Og") == 0;
  if (narg >= 2 && narg - 2 != ntypes) {
    std::string given;
    for (int k = 2; k < narg; k++) given += (k > 2 ? " " : "") + std::string(arg[k]);
    error->all(FLERR, "pair_coeff for pair_style mliap: {} element(s) given ({}) for {} atom "
                      "type(s); expected: pair_coeff * * <one element per atom type>{}",
               narg - 2, given, ntypes,
               polyget_model ? "" : " (or NULL to skip a type)");
  }
  if (polyget_model && narg >= 2) {
    // NULL and the count: the contract's rule (unknown symbols are reported, with the model's
    // elements, by the polyget ML-IAP class at the first step)
    for (int t = 1; t <= ntypes; t++)
      if (strcmp(arg[t + 1], "NULL") == 0)
        error->all(FLERR, "pair_coeff for pair_style mliap unified (polyget): atom type {} is "
                          "mapped to NULL, which polyget does not support (an atom the model "
                          "does not see would change its neighbours' energies); map every atom "
                          "type to one of the model's elements", t);
  }
  PairMLIAP::coeff(narg, arg);
}
