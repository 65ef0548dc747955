"""cxr-lightning: CNNs for pulmonary edema and pleural effusion on chest radiographs."""

import os

# Nothing leaves the machine by default: albumentations would otherwise query PyPI for a newer
# release at import time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
