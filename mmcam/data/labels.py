"""Label specifications: what the integer values of a ground-truth mask mean, per dataset and year.

A :class:`LabelSpec` lists every value a mask of its dataset may contain and the *regions* (sets of
values) that can serve as the segmentation target. Label conventions differ between releases of the
same challenge, so every dataset names its own spec and nothing relies on a global constant:

============  ===========================================================  ===================
spec          values                                                       regions
============  ===========================================================  ===================
brats2018     0 background, 1 NCR/NET, 2 ED, 4 ET                           WT {1,2,4} (default),
...2021       (BraTS 2018-2022: enhancing tumour is label 4)                 TC {1,4}, ET {4}
brats2023     0 background, 1 NCR, 2 SNFH, 3 ET                              WT {1,2,3} (default),
              (from 2023 on: enhancing tumour is label 3)                    TC {1,3}, ET {3}
brats2024     0 background, 1 NETC, 2 SNFH, 3 ET, 4 RC                       WT {1,2,3} (default),
              (4 = resection cavity: allowed, part of no tumour region)      TC {1,3}, ET {3}
msd_prostate  0 background, 1 PZ, 2 TZ                                       WG {1,2} (default),
                                                                             PZ {1}, TZ {2}
============  ===========================================================  ===================

WT = whole tumour (every tumour label), TC = tumour core, ET = enhancing tumour, WG = whole prostate
gland, PZ = peripheral zone, TZ = transition zone. BraTS 2022 reused the 2021 data: use ``brats2021``.
Region names are case-insensitive.

A mask holding a value outside its spec raises :class:`~mmcam.data.errors.DataError` naming the file
and the unexpected values (with a hint when the values suggest another release).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mmcam.data.errors import DataError

__all__ = ["LabelSpec", "LABEL_SPECS", "get_label_spec"]


@dataclass(frozen=True)
class LabelSpec:
    """The meaning of a dataset's mask values.

    Attributes:
        name: the spec's name (a key of :data:`LABEL_SPECS`).
        values: every value a mask may contain -> its meaning; 0 is the background.
        regions: region name (upper case) -> the values that form it.
        default_region: the region used when none is asked for.
        hint: appended to the error for unexpected values (e.g. which other release uses them).
    """

    name: str
    values: Mapping[int, str]
    regions: Mapping[str, frozenset]
    default_region: str
    hint: str = field(default="", compare=False)

    def region_name(self, region: str | None) -> str:
        """The canonical (upper-case) name of ``region``; ``None`` gives :attr:`default_region`."""
        if region is None:
            return self.default_region
        if not isinstance(region, str) or region.upper() not in self.regions:
            raise DataError(
                f"unknown region {region!r} for label spec {self.name!r}; choose one of {', '.join(self.regions)}"
            )
        return region.upper()

    def check_values(self, labels: np.ndarray, source) -> None:
        """Raise :class:`DataError` naming ``source`` if ``labels`` holds a value outside :attr:`values`.

        Args:
            labels: integer array of any shape.
            source: the file (or other origin) of ``labels``, named in the error.
        """
        present = np.unique(labels)
        unexpected = sorted(int(v) for v in present if int(v) not in self.values)
        if unexpected:
            allowed = ", ".join(str(v) for v in sorted(self.values))
            message = (
                f"{source}: unexpected label values {unexpected} for label spec {self.name!r} (allowed: {allowed})"
            )
            raise DataError(message + (f"; {self.hint}" if self.hint else ""))

    def lookup_table(self, region: str | None = None) -> np.ndarray:
        """A (256,) bool table ``t`` with ``t[v]`` true iff value ``v`` belongs to ``region``.

        ``t[labels]`` maps a uint8 mask of any shape to the region's boolean mask.
        """
        table = np.zeros(256, dtype=bool)
        table[sorted(self.regions[self.region_name(region)])] = True
        return table

    def region_mask(self, labels: np.ndarray, region: str | None = None) -> np.ndarray:
        """The boolean mask (same shape as ``labels``) of the voxels in ``region``."""
        return np.isin(labels, sorted(self.regions[self.region_name(region)]))


def _brats_spec(year: int) -> LabelSpec:
    """The BraTS glioma label spec of a release year (2018-2021, 2023, 2024)."""
    if year <= 2022:
        enhancing = 4
        values = {
            0: "background",
            1: "necrotic and non-enhancing tumour core (NCR/NET)",
            2: "peritumoral edema (ED)",
            4: "GD-enhancing tumour (ET)",
        }
        hint = "label 3 is the enhancing tumour from BraTS 2023 on: use dataset brats2023 (or brats2024)"
    else:
        enhancing = 3
        core = "non-enhancing tumour core (NETC)" if year >= 2024 else "necrotic tumour core (NCR)"
        values = {
            0: "background",
            1: core,
            2: "surrounding non-enhancing FLAIR hyperintensity (SNFH)",
            3: "enhancing tumour (ET)",
        }
        if year >= 2024:
            values[4] = "resection cavity (RC), part of no tumour region"
            hint = ""
        else:
            hint = (
                "label 4 is the resection cavity of BraTS 2024: use dataset brats2024; "
                "BraTS 2018-2022 use 4 for the enhancing tumour: use brats2021"
            )
    regions = {
        "WT": frozenset({1, 2, enhancing}),
        "TC": frozenset({1, enhancing}),
        "ET": frozenset({enhancing}),
    }
    return LabelSpec(f"brats{year}", values, regions, "WT", hint)


_PROSTATE = LabelSpec(
    "msd_prostate",
    {0: "background", 1: "peripheral zone (PZ)", 2: "transition zone (TZ)"},
    {"WG": frozenset({1, 2}), "PZ": frozenset({1}), "TZ": frozenset({2})},
    "WG",
)

#: Every label spec by name.
LABEL_SPECS: dict[str, LabelSpec] = {
    **{f"brats{year}": _brats_spec(year) for year in (2018, 2019, 2020, 2021, 2023, 2024)},
    _PROSTATE.name: _PROSTATE,
}


def get_label_spec(name: str) -> LabelSpec:
    """The :class:`LabelSpec` called ``name``; raises :class:`DataError` listing the known ones."""
    try:
        return LABEL_SPECS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown label spec {name!r}; choose one of {', '.join(LABEL_SPECS)}") from None
