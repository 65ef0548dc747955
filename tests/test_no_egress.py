"""Nothing leaves the machine by default: importing the pipeline makes no network request."""

import os
import subprocess
import sys

RECORD_LOOKUPS = """
import socket
lookups = []
def refuse(host, *args, **kwargs):
    lookups.append(host)
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
{imports}
print("LOOKUPS", lookups)
"""


def _lookups(imports: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", RECORD_LOOKUPS.format(imports=imports)],
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    return next(line for line in done.stdout.splitlines() if line.startswith("LOOKUPS"))


def test_importing_the_pipeline_looks_up_no_host():
    assert _lookups("import cxr_lightning.train") == "LOOKUPS []"


def test_the_check_can_fail_albumentations_alone_phones_home():
    assert _lookups("import albumentations") != "LOOKUPS []"
