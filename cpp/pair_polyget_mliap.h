/* -*- c++ -*- ----------------------------------------------------------
   polyget: `pair_style mliap` with its pair_coeff checked before the upstream code reads it.

   Upstream PairMLIAP::coeff reads one element per atom type without checking how many were
   given: too few is a segmentation fault, too many are ignored silently. The polyget plugin
   (cpp/pair_polyget_plugin.cpp) registers this subclass under the name "mliap" (every other
   behaviour is upstream's), so `pair_coeff * * H C` on a 3-type system stops with a message.
   For polyget's ML-IAP model (which declares the whole periodic table) NULL is refused as in
   pair_style polyget; other ML-IAP models keep upstream's NULL handling.
------------------------------------------------------------------------- */

#ifndef LMP_PAIR_POLYGET_MLIAP_H
#define LMP_PAIR_POLYGET_MLIAP_H

#include "pair_mliap.h"

namespace LAMMPS_NS {

class PairPolyGETMLIAP : public PairMLIAP {
 public:
  PairPolyGETMLIAP(class LAMMPS *lmp) : PairMLIAP(lmp) {}
  void coeff(int, char **) override;
};

}    // namespace LAMMPS_NS

#endif
