"""SENSE runtime library: ensembles, readers/writers, model bundles, inference and projection.

Imports only numpy at module level; scikit-learn, umap-learn, onnxruntime and VTK are imported
lazily where they are used, so that ParaView's Python starts quickly and the library works
without VTK.
"""

from sense_core.ensemble import Ensemble, NormalizationStats, Split, split_labeled
from sense_core.errors import EnsembleError, SenseError

__version__ = "0.1.0"

__all__ = [
    "Ensemble",
    "EnsembleError",
    "NormalizationStats",
    "SenseError",
    "Split",
    "__version__",
    "split_labeled",
]
