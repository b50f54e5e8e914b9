"""The benchmark suite from a source checkout: ``python bench/report.py [options]`` is
``nertron bench [options]``, both ``nertron.bench.report.main`` (see there and bench/README.md).

    python bench/report.py --quick --out /tmp/r --sections crf,e2e
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without an installed nertron
    sys.path.insert(0, str(REPO))

from nertron.bench.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
