"""Nothing leaves the machine by default: importing the pipeline makes no network request, and
a default (W&B offline) training run opens no connection off the machine."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


_INET_CONNECT = re.compile(
    r"^(?P<pid>\d+)\s+(?:connect|sendto|sendmsg)\(.*sa_family=AF_INET6?, "
    r".*?(?:inet_addr\(\"(?P<v4>[^\"]+)\"\)|inet_pton\(AF_INET6, \"(?P<v6>[^\"]+)\")")
_LOOPBACK = ("127.", "::1", "0.0.0.0", "::")


def outside_connections(trace: str) -> list[str]:
    """The traced connect/sendto/sendmsg calls to an IPv4/IPv6 address off this machine (DNS
    servers included), from any process or thread."""
    found = []
    for line in trace.splitlines():
        match = _INET_CONNECT.match(line)
        if match and not (match["v4"] or match["v6"]).startswith(_LOOPBACK):
            found.append(line[:200])
    return found


def test_outside_connections_parses_strace_lines():
    trace = ('9375  connect(8, {sa_family=AF_INET, sin_port=htons(53), '
             'sin_addr=inet_addr("10.255.255.53")}, 16) = 0\n'
             '9375  connect(8, {sa_family=AF_INET, sin_port=htons(80), '
             'sin_addr=inet_addr("127.0.0.1")}, 16) = 0\n'
             '9376  connect(9, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
             'inet_pton(AF_INET6, "2606:4700::6810:84e5", &sin6_addr), sin6_scope_id=0}, 28) = 0\n'
             '9103  connect(3, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1\n')
    assert [line[:4] for line in outside_connections(trace)] == ["9375", "9376"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (syscall trace)")
def test_a_default_offline_training_run_opens_no_outside_connection(tmp_path, cli_data):
    """A real training job (the default config: W&B offline), every process and thread traced
    by strace: no connection or datagram to any address off the machine, DNS included."""
    trace = tmp_path / "trace.txt"
    command = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
               sys.executable, "-m", "cxr_lightning.train", "formulation=multilabel",
               f"paths.root_dir={tmp_path}", f"paths.data_dir={cli_data}",
               "data.sample.n_subjects=40", "data.image_size=32",
               "trainer.max_epochs=1", "unfreeze.max_blocks=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MIMIC_CXR"))}
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wandb" in done.stdout + done.stderr  # the W&B run was started, offline
    assert outside_connections(trace.read_text()) == []
