"""The host allocator's share of CPU speed: glibc's default malloc against ``tune_host_allocator``.

    python benchmarks/allocator.py [--rounds 3] [--image PATH] [--no-compile]

``mallopt`` is process-wide and its effect depends on what the process freed before, so each
setting runs in fresh child processes, alternated round by round (default, tuned; then tuned,
default; …) so that a changing load hits both alike. Each child loads the bundled model, waits for
its compiled scoring graph (a shared inductor cache: only the first child compiles), and times, in
this order: 40 back-to-back eager scoring forwards at the CPU chunk (batch 4), 40 compiled ones, one
exact Score-CAM eager and one compiled (`explain.score_regions` + the region map, as the app runs
it). Reported: the median over rounds per setting, the per-round ratio default / tuned, and each
child's maximum resident set. A measurement, never an assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"
SETTINGS = ("default", "tuned")
FORWARDS = 40


def child(setting: str, image: Path, compile_graph: bool) -> dict[str, float]:
    """One fresh process's timings under ``setting`` (see the module doc)."""
    if setting == "tuned":
        from fusioncam.allocator import tune_host_allocator

        if not tune_host_allocator():
            raise SystemExit("tune_host_allocator() did nothing here (not GNU libc, or FUSIONCAM_TUNE_MALLOC=0)")
    import resource

    import torch

    from fusioncam import load_model
    from fusioncam.backend import CPU_CHUNK
    from fusioncam.explain import capture_evidence, score_regions
    from fusioncam.images import load_image

    model = load_model("efficientnet_lite0", compile=compile_graph)
    with torch.inference_mode():
        batch = torch.randn((CPU_CHUNK, 3, *model.input_size)).contiguous(memory_format=torch.channels_last)
    if compile_graph:
        model.score(batch, CPU_CHUNK)
        model.scorers.wait()
        if model.scorers.failure:
            raise SystemExit(f"the scoring network did not compile: {model.scorers.failure}")
    evidence = capture_evidence(model, [load_image(image)])[0]
    result: dict[str, float] = {}
    for mode in ("eager", "compiled") if compile_graph else ("eager",):
        model.compile = mode == "compiled"
        model.score(batch, CPU_CHUNK)
        times = []
        for _ in range(FORWARDS):
            started = time.perf_counter()
            model.score(batch, CPU_CHUNK)
            times.append(time.perf_counter() - started)
        result[f"{mode} forward ms"] = 1000 * statistics.median(times)
        started = time.perf_counter()
        score_regions(model, [evidence], chunk_size=CPU_CHUNK)[0].region_map()
        result[f"{mode} Score-CAM s"] = time.perf_counter() - started
    result["max RSS MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_child(setting: str, image: Path, compile_graph: bool, cache: str) -> dict[str, float]:
    """``child`` in a fresh interpreter; its JSON line."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
    env.pop("FUSIONCAM_COMPILE", None)
    command = [sys.executable, __file__, "--child", setting, "--image", str(image)]
    if not compile_graph:
        command.append("--no-compile")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {setting} child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", type=Path, default=None,
                        help="image to explain (default: the first ImageNet sample image, else assets/cat.jpg)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    image = args.image or next(iter(sorted(SAMPLE.glob("*.jpg"))), ROOT / "assets" / "cat.jpg")
    if args.child:
        print(json.dumps(child(args.child, image, args.compile)))
        return
    cache = tempfile.mkdtemp(prefix="fusioncam-inductor-")
    results: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    for round_index in range(args.rounds):
        order = SETTINGS if round_index % 2 == 0 else SETTINGS[::-1]
        for setting in order:
            results[setting].append(run_child(setting, image, args.compile, cache))
            print(f"  round {round_index + 1}, {setting}: {results[setting][-1]}", flush=True)
    keys = list(results["default"][0])
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n## Host allocator, {image.name}, {args.rounds} rounds · load average at end {load}\n")
    print("| measure | glibc default (median) | tuned (median) | default / tuned per round |")
    print("|---|---:|---:|---|")
    for key in keys:
        default = [r[key] for r in results["default"]]
        tuned = [r[key] for r in results["tuned"]]
        ratios = ", ".join(f"{d / t:.2f}" for d, t in zip(default, tuned, strict=True))
        print(f"| {key} | {statistics.median(default):.2f} | {statistics.median(tuned):.2f} | {ratios} |")


if __name__ == "__main__":
    main()
