"""Training: the configuration and presets (:mod:`.config`), the training loop (:mod:`.trainer`),
checkpoints with every RNG state (:mod:`.checkpoint`), the run directory (:mod:`.run_dir`) and where a
run's slice cache lives (:mod:`.cache_location`). The command line is :mod:`mmcam.train`."""
