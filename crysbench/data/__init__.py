"""Crystal data: canonical records, real-format readers, validation and symmetry labels.

    from crysbench.data import read, write_skip_report
    reading = read("matbench_mp_gap.json.gz", "matbench", targets=["gap pbe"], on_error="skip")
    crystals = list(reading)
    write_skip_report("skipped.csv", reading.skipped)

Importing this package loads numpy only; pymatgen, ASE and spglib load when first needed.
"""

from crysbench.data.crystal import Crystal, Provenance
from crysbench.data.readers import READERS, Reading, available_formats, read, register_reader
from crysbench.data.symmetry import CRYSTAL_SYSTEMS, crystal_system_index, symmetry_labels
from crysbench.data.validate import (
    MIN_DISTANCE,
    RecordError,
    Skipped,
    crystal_problem,
    min_periodic_distance,
    validate,
    write_skip_report,
)

__all__ = [
    "CRYSTAL_SYSTEMS", "MIN_DISTANCE", "READERS", "Crystal", "Provenance", "Reading", "RecordError",
    "Skipped", "available_formats", "crystal_problem", "crystal_system_index", "min_periodic_distance",
    "read", "register_reader", "symmetry_labels", "validate", "write_skip_report",
]
