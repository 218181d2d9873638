"""PocketFlow 0.0.3's own test suite, run unmodified against ``adapters.pocketflow``.

The suite ships in PocketFlow's sdist, which is fetched from PyPI at test time
(cached in pytest's cache directory, checked against its sha256) and never
copied into this repository.  Each run happens in a subprocess where
``sys.modules["pocketflow"]`` is ``adapters.pocketflow``, so every
``from pocketflow import ...`` in those files gets the adapter.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SDIST = "pocketflow-0.0.3.tar.gz"
SDIST_SHA256 = "afadc1c44658bf811668a789dee7053ed654d021c861c58696a2cb6bc4775133"
ROOT = Path(__file__).resolve().parent.parent

# Runs pytest with the adapter standing in for pocketflow, then checks that
# the classes the test modules imported really are the adapter's.
SHIM = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "trio-asyncio":
        import trio_asyncio  # makes asyncio.run / new_event_loop build trio-asyncio loops
    import adapters.pocketflow
    sys.modules["pocketflow"] = adapters.pocketflow
    import pytest
    code = pytest.main(sys.argv[2:])
    names = set(adapters.pocketflow.__all__)
    used = [
        getattr(module, name)
        for key, module in list(sys.modules.items())
        if key.startswith("test_")
        for name in names
        if hasattr(module, name)
    ]
    assert used and all(cls is getattr(adapters.pocketflow, cls.__name__) for cls in used), used
    print("SHIM-CHECKED", len(used))
    sys.exit(code)
    """
)


@pytest.fixture(scope="module")
def sdist_tests(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist's tests/ directory, extracted into a temporary directory."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    download = cache.mkdir("pocketflow-sdist") if cache is not None else tmp_path_factory.mktemp("sdist")
    archive = download / SDIST
    if not archive.exists() or hashlib.sha256(archive.read_bytes()).hexdigest() != SDIST_SHA256:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             "pocketflow==0.0.3", "-d", str(download)],
            check=True,
            timeout=300,
        )
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == SDIST_SHA256
    target = tmp_path_factory.mktemp("pocketflow-conformance")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("pocketflow-0.0.3/tests/") and m.isfile()]
        tar.extractall(target, members=members, filter="data")
    tests = target / "pocketflow-0.0.3" / "tests"
    # Only the tests were extracted: no copy of the real package sits next to them.
    assert not (tests.parent / "pocketflow").exists()
    return tests


@pytest.mark.parametrize("loop", ["asyncio", "trio-asyncio"])
def test_pocketflow_sdist_suite_passes_against_adapter(sdist_tests: Path, loop: str) -> None:
    """Every test of PocketFlow 0.0.3's own suite passes with pocketflow = adapters.pocketflow.

    ``asyncio``: plain asyncio loops, so flows run as Trio guests; ``trio-asyncio``:
    trio_asyncio imported first, so asyncio.run builds trio-asyncio loops.
    """
    report = sdist_tests.parent / f"report-{loop}.xml"
    proc = subprocess.run(
        [sys.executable, "-c", SHIM, loop, "-q", "-p", "no:cacheprovider", "--rootdir", str(sdist_tests.parent),
         f"--junitxml={report}", str(sdist_tests)],
        cwd=sdist_tests.parent,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "SHIM-CHECKED" in proc.stdout
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    print(f"pocketflow 0.0.3 sdist suite on adapters.pocketflow ({loop}): {counts['tests']} tests, {counts}")
    assert counts["tests"] == 54  # every test the sdist ships (0.0.3)
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0
