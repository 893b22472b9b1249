"""The fused equivariance operators (docs/operator.md), registered with the PyTorch dispatcher.

Each public function validates its arguments (shapes, dtypes, devices, options) and calls an operator of
the ``torch.ops.mmcam`` namespace, implemented in C++ (``csrc/``). The operators carry a fake (meta)
implementation and an autograd formula, so they work under ``torch.compile(fullgraph=True)`` and pass
``torch.library.opcheck``.

Conventions:
    * CAMs are channel-first ``(N, C, H, W)``; a *plane* is one ``(H, W)`` map of one sample and channel.
    * ``matrix`` ``(N, 2, 3)`` is the source->destination PIXEL affine of kornia 0.9: integer coordinates
      are pixel centres and ``dst(x, y) = src(M^-1 (x, y, 1))``. It is never differentiated.
    * ``mn(a) = relu(relu(a) - lo - eps) / (hi - lo + eps)`` with ``lo``/``hi`` the min/max of
      ``relu(a)`` over each plane (ties share the gradient, as ``amin``/``amax``).
    * Samples with weight 0 are skipped: they contribute exactly 0 to the loss and get exactly 0 gradient.

Devices: CPU (float32/float64; parallel over planes, bitwise deterministic for any thread count) and CUDA
when the extension was built with its kernels (``mmcam.build_info()["cuda"]``; float32/float64 and
float16/bfloat16 computed in float32). On CUDA the backward scatters with atomics by default and gathers
deterministically (bitwise reproducible) under ``torch.use_deterministic_algorithms(True)``.

A non-invertible ``matrix`` (a non-finite entry or a zero determinant) is an error, never turned into
finite numbers. On the CPU every operator, forward and backward, raises ``ValueError`` naming the sample.
On CUDA no call synchronises with the host, so nothing is raised: instead every output of that sample
that is not skipped is NaN, so that a non-finite check (e.g. the trainer's) catches it:

    * ``warp_normalized``: the sample's planes of ``P`` and of the gradient to ``src``;
    * ``equivariance_loss``: its per-sample loss (so the reduced loss too) and its gradients to ``src`` and
      ``dst``, unless its weight is 0 (then exact zeros, as for any skipped sample);
    * ``equivariance_terms``: every ER term and every CMER term of non-zero weight it enters, and its
      gradients to ``cams`` and ``cams_t``, unless its label is 0 (then exact zeros).

``mmcam.losses.equivariance_terms`` checks matrices (one host sync) before calling the operator, so it
raises ``ValueError`` on both devices.

Modules: :mod:`.fused` (the public functions), :mod:`.registration` (fake kernels, autograd formulas and
the autocast rule of the ``torch.ops.mmcam`` operators), :mod:`.checks` (argument checks shared with the
references), :mod:`.extension` (loading the compiled ``mmcam._C``), :mod:`.reference` (eager references:
the ground truth of the tests and benchmarks; kornia is imported only when a kornia reference runs).
"""

from mmcam.ops.fused import equivariance_loss, warp_normalized

__all__ = ["warp_normalized", "equivariance_loss"]
