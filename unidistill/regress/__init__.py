"""The cross-modality regression harness (``unidistill regress``): the objective x modality matrix's fast tier
(``matrix``) and the quality tier against stored goldens (``quality``). A harness over the core, not part of it."""

from unidistill.regress.matrix import (
    Cell,
    CellFailure,
    build_matrix,
    format_matrix,
    objective_classes,
    run_fast,
    run_fast_cell,
)
from unidistill.regress.quality import (
    Budget,
    QualityDirs,
    compare_goldens,
    format_quality,
    metric_choice,
    quality_configs,
    quality_dirs,
    run_quality,
)

__all__ = [
    "Budget",
    "Cell",
    "CellFailure",
    "QualityDirs",
    "build_matrix",
    "compare_goldens",
    "format_matrix",
    "format_quality",
    "metric_choice",
    "objective_classes",
    "quality_configs",
    "quality_dirs",
    "run_fast",
    "run_fast_cell",
    "run_quality",
]
