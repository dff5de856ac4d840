"""How fast an uncached hub model fails offline: the timing the registry test used to assert.

``tests/test_models.py`` checks what the failure says (the model's name, "offline"); how long it
takes is a measurement of this machine, so it lives here. ``--simulate`` makes every host
unreachable (as the test does); without it the real reachability check runs (3 s timeout).

    python benchmarks/offline_failure.py --simulate
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam import ModelError, load_model
from fusioncam import models as registry

SPECS = ("timm:resnet18", "torchvision:resnet18")
FAIL_FAST_S = 30   # what "fast" meant in the test: no minutes of download retries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="treat every host as unreachable")
    args = parser.parse_args()
    if args.simulate:
        registry._reachable = lambda host, timeout=3.0: False
    for spec in SPECS:
        started = time.perf_counter()
        try:
            load_model(spec)
            outcome = "loaded (weights cached or network reachable)"
        except ModelError as error:
            outcome = f"failed: {error}"
        seconds = time.perf_counter() - started
        verdict = "fast" if seconds < FAIL_FAST_S else f"SLOW (over {FAIL_FAST_S} s)"
        print(f"{spec}: {seconds:.2f} s, {verdict}; {outcome}")


if __name__ == "__main__":
    main()
