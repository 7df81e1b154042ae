// The differentiable ternary weight op (forward: ternarize, backward: scale_grad).
// Tests: tests/test_ttq_layer.cpp.
#include "kernels/ternary_weight.h"

#include "engine/autograd.h"
#include "kernels/ternarize.h"

namespace ttq::kernels {

Tensor ternary_weight(const Tensor& latent, const Tensor& wp, const Tensor& wn, double t, WnGradMode mode) {
  TernarizeResult r = ternarize(latent, t, wp, wn);
  Tensor wq = r.wq;
  if (autograd::any_requires_grad({&latent, &wp, &wn})) {
    autograd::record("ternary_weight", {&latent, &wp, &wn}, {&wq},
                     [w = latent.detach(), delta = r.delta, p = wp.detach(), n = wn.detach(),
                      mode](const std::vector<Tensor>& g) {
                       ScaleGrad sg = scale_grad(g[0], w, delta, p, n, mode);
                       return std::vector<Tensor>{sg.latent, sg.wp, sg.wn};
                     });
  }
  return wq;
}

}  // namespace ttq::kernels
