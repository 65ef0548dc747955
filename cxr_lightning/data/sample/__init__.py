"""The embedded dataset: a generated, MIMIC-CXR-format sample (``data=sample``).

:mod:`~cxr_lightning.data.sample.generate` plans the patients, studies, labels and splits and
writes the tables and images, which :mod:`~cxr_lightning.data.sample.render` draws and encodes
as DICOM; ``python -m cxr_lightning.data.sample`` is the command line (``__main__``). The sample
is read back by the ``sample`` source exactly as a MIMIC-CXR download is
(:mod:`cxr_lightning.data.sources.mimic`).
"""

from cxr_lightning.data.sample.generate import (
    ensure_sample,
    generate_sample,
    is_complete_sample,
    sample_out_dir,
)

__all__ = ["ensure_sample", "generate_sample", "is_complete_sample", "sample_out_dir"]
