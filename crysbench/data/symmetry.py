"""Space group and crystal system labels from spglib (used as pre-training labels, as in CrysGNN)."""

from __future__ import annotations

import warnings

from crysbench.data.crystal import Crystal

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal",
                   "cubic")
# Last space group number of each crystal system, in the order of CRYSTAL_SYSTEMS.
_LAST_SPACE_GROUP = (2, 15, 74, 142, 167, 194, 230)


def crystal_system_index(space_group: int) -> int:
    """Crystal system index 0..6 (triclinic .. cubic) of a space group number 1..230."""
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group number must be in 1..230, got {space_group}")
    return next(i for i, last in enumerate(_LAST_SPACE_GROUP) if space_group <= last)


def symmetry_labels(crystal: Crystal, symprec: float = 0.1) -> tuple[int, int]:
    """(space group number 1..230, crystal system index 0..6) found by spglib with ``symprec`` Å."""
    import spglib

    cell = (crystal.cell, crystal.frac_positions, crystal.numbers)
    try:
        with warnings.catch_warnings():  # spglib 2.x warns about its old None-on-error convention
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
            error = spglib.get_error_message() if dataset is None else ""
    except Exception as exc:  # newer spglib raises SpglibError instead of returning None
        dataset, error = None, str(exc)
    if dataset is None:
        raise ValueError(f"spglib found no symmetry for crystal {crystal.id!r} "
                         f"({crystal.provenance.source}): {error}")
    number = int(dataset.number)
    return number, crystal_system_index(number)
