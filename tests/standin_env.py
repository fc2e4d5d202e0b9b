"""Put the engine stand-ins (tests/standins) where a launcher looks for the real engines.

``install(bin_dir)`` writes ``vllm`` and ``trtllm-serve`` executables into
``bin_dir`` (run by this interpreter) and returns the environment additions:
``PATH`` with ``bin_dir`` first, and ``PYTHONPATH`` with tests/standins first,
so that ``python -m sglang.launch_server`` finds the SGLang stand-in. The
stand-ins' own knobs (``LLMPERF_STANDIN_*``, ``LLMPERF_FAKE_NVML_DIR``) are
described in tests/standins/common.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

STANDINS = Path(__file__).resolve().parent / "standins"
EXECUTABLES = {"vllm": "vllm_standin", "trtllm-serve": "trtllm_standin"}

_WRAPPER = '''#!{python}
import sys
sys.path.insert(0, {standins!r})
from common import main_wrapper
from {module} import main
sys.exit(main_wrapper(main))
'''


def install(bin_dir: Path) -> dict[str, str]:
    """Write the ``vllm`` and ``trtllm-serve`` stand-ins into ``bin_dir``; return PATH and PYTHONPATH."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, module in EXECUTABLES.items():
        path = bin_dir / name
        path.write_text(_WRAPPER.format(python=sys.executable, standins=str(STANDINS), module=module))
        path.chmod(0o755)
    path_env = os.environ.get("PATH", "")
    python_path = os.environ.get("PYTHONPATH", "")
    return {
        "PATH": os.pathsep.join(p for p in (str(bin_dir), path_env) if p),
        "PYTHONPATH": os.pathsep.join(p for p in (str(STANDINS), python_path) if p),
    }
