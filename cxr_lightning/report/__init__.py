"""The study's tables and figures rebuilt from a sweep's results.json files (no W&B API).

``python -m cxr_lightning.report [SWEEP_DIR] [--out DIR]`` writes report.md, the figures as PNG
with the numbers behind each as CSV, and the tables as CSV.
"""

from cxr_lightning.report.build import (
    ReportFigure,
    SweepReport,
    compile_report,
    report_figures,
    report_markdown,
    write_report,
)
from cxr_lightning.report.load import newest_sweep

__all__ = ["ReportFigure", "SweepReport", "compile_report", "newest_sweep", "report_figures",
           "report_markdown", "write_report"]
