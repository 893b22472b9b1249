"""Class-activation maps as images: min-max normalisation of a map (:mod:`.normalize`), pseudo-masks from
the CAM (:mod:`.pseudo_masks`) and the Grad-CAM / Grad-CAM++ baselines (:mod:`.gradcam`)."""
