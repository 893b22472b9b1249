"""Evaluation: loading a trained run and computing its maps (:mod:`.runs`), choosing the pseudo-mask
threshold without test labels (:mod:`.thresholds`), overlap counts and per-patient Dice (:mod:`.overlap`),
Dice / HD95 / ASSD in millimetres (:mod:`.surface_metrics`, on :mod:`.distance_transform`). The command
lines are :mod:`mmcam.evaluate` and :mod:`mmcam.infer`; the protocol is docs/evaluation.md."""
