"""Load on the app as a Space sees it: N simulated visitors with ``gradio_client`` against
``python app.py``, each explaining an image of its own and then re-fusing it ten times (θ and λ moves).

Reports, per N, the p50/p95 of the time to the first map (Grad-CAM), to the first Score-CAM picture
(a partial, anytime map where the app streams them; else the final one), the full explanation and
a re-fusion, and counts errors and queue refusals: every request must be answered or refused with
a sentence. The visitors' images are mirrored copies of the assets (each visitor's bytes differ
from the examples'), so no answer comes from the app's kept example explanations; a last line
times a click on an example once the app has had time to prepare them. A second scenario measures
fair sharing: one visitor's θ change while another visitor's Score-CAM runs on the same model (the
old per-model lock made it wait for the whole Score-CAM).

    python benchmarks/load.py                      # launches app.py from this checkout
    python benchmarks/load.py --visitors 1 4 8 --app-dir /path/to/other/checkout   # compare builds

Bounded: every visitor makes 11 requests; the server is local (127.0.0.1) and stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "assets").glob("*.jpg"))
REFUSIONS = [(theta, strength) for theta in (10, 20, 30, 40, 50) for strength in (1.5, 3.0)]   # ten moves
FIRST_MAP = 2   # the /explain outputs' index of the Grad-CAM overlay
SCORE_CAM = 4   # … and of the Score-CAM overlay


def visitor_images(folder: Path, count: int) -> list[Path]:
    """``count`` uploads of the visitors' own: mirrored assets, each visitor's bytes different."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = ImageOps.mirror(Image.open(EXAMPLES[i % len(EXAMPLES)]).convert("RGB"))
        path = folder / f"visitor-{i}.png"
        image.crop((i // len(EXAMPLES), 0, image.width, image.height)).save(path)
        paths.append(path)
    return paths


@contextmanager
def running_app(app_dir: Path) -> Iterator[str]:
    """``python app.py`` from ``app_dir`` on a free local port; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, "app.py"], cwd=app_dir, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the app did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def shows_picture(value: object) -> bool:
    """Whether an image output's value is a picture: a file, or an update carrying one (a skipped
    output arrives as an update without a value)."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        value = value.get("value")
    return bool(value)


def visitor(url: str, image: Path, record: dict[str, list], lock: threading.Lock) -> None:
    """One visitor: explain ``image`` (timing the first map and the whole run), then ten re-fusions."""
    try:
        client = Client(url, verbose=False)
        started = time.perf_counter()
        job = client.submit(handle_file(str(image)), api_name="/explain")
        first = score_cam = None
        while not job.done():
            outputs = [output for output in job.outputs() if output]
            if first is None and any(shows_picture(output[FIRST_MAP]) for output in outputs):
                first = time.perf_counter() - started
            if score_cam is None and any(shows_picture(output[SCORE_CAM]) for output in outputs):
                score_cam = time.perf_counter() - started
            time.sleep(0.02)
        job.result()
        whole = time.perf_counter() - started
        refusions = []
        for theta, strength in REFUSIONS:
            began = time.perf_counter()
            client.predict(theta=theta, strength=strength, weights="reference", gradient_method="gradcam",
                           colormap="jet", opacity=0.5, api_name="/refuse")
            refusions.append(time.perf_counter() - began)
        with lock:
            record["first"].append(first if first is not None else whole)
            record["score_cam"].append(score_cam if score_cam is not None else whole)
            record["whole"].append(whole)
            record["refuse"].extend(refusions)
    except Exception as error:   # every failure is counted, by its kind: nothing is lost silently
        kind = "refused (queue full)" if "queue" in str(error).lower() else f"error: {type(error).__name__}"
        with lock:
            record["failures"].append(f"{kind}: {str(error)[:120]}")


def load_row(url: str, images: list[Path]) -> dict[str, object]:
    """One visitor per image, all at once; percentiles in seconds."""
    record: dict[str, list] = {"first": [], "score_cam": [], "whole": [], "refuse": [], "failures": []}
    lock = threading.Lock()
    visitors = len(images)
    threads = [threading.Thread(target=visitor, args=(url, image, record, lock)) for image in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {"N": visitors, **{f"{name} p{q}": pct(record[name], q) for name in ("first", "score_cam", "whole", "refuse")
                              for q in (50, 95)},
            "spread": max(record["whole"]) - min(record["whole"]) if record["whole"] else float("nan"),
            "answered": len(record["whole"]), "failures": record["failures"]}


def example_click(url: str) -> float:
    """Seconds for a new visitor's click on an example (default settings) to its final maps."""
    started = time.perf_counter()
    Client(url, verbose=False).predict(handle_file(str(EXAMPLES[-1])), api_name="/explain")
    return time.perf_counter() - started


def theta_during_score_cam(url: str, images: list[Path]) -> tuple[float, float]:
    """Seconds of one visitor's θ re-fusion while another visitor's Score-CAM runs, and the
    length of that other explanation."""
    waiting = Client(url, verbose=False)
    waiting.predict(handle_file(str(images[0])), api_name="/explain")
    busy = Client(url, verbose=False)
    started = time.perf_counter()
    job = busy.submit(handle_file(str(images[1])), api_name="/explain")
    while not any(shows_picture(output[FIRST_MAP]) for output in job.outputs() if output):   # Score-CAM has begun
        time.sleep(0.02)
    began = time.perf_counter()
    waiting.predict(theta=35, strength=1.0, weights="reference", gradient_method="gradcam", colormap="jet",
                    opacity=0.5, api_name="/refuse")
    theta_seconds = time.perf_counter() - began
    job.result()
    return theta_seconds, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--app-dir", type=Path, default=ROOT, help="the checkout whose app.py to run")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds to let the app prepare (warm-up, example explanations) before the load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_app(args.app_dir) as url:
        # The visitors' clients are on other machines in a real Space: here they share its cores, so
        # they run at the lowest CPU priority and the server (started above, at normal priority)
        # gets the machine whenever it has work.
        os.nice(19)
        images = visitor_images(Path(folder), max(args.visitors) * (len(args.visitors) + 1) + 2)
        time.sleep(args.settle)
        Client(url, verbose=False).predict(handle_file(str(images.pop())), api_name="/explain")   # warm
        print("| visitors | first map p50 / p95 (s) | first Score-CAM picture p50 / p95 (s) | full explanation "
              "p50 / p95 (s) | spread of completions (s) | re-fusion p50 / p95 (s) | answered | errors or refusals |")
        print("|---|---|---|---|---|---|---|---|")
        for visitors in args.visitors:
            row = load_row(url, [images.pop() for _ in range(visitors)])
            print(f"| {visitors} | {row['first p50']:.2f} / {row['first p95']:.2f} | {row['score_cam p50']:.2f} / "
                  f"{row['score_cam p95']:.2f} | {row['whole p50']:.1f} / {row['whole p95']:.1f} | "
                  f"{row['spread']:.1f} | {row['refuse p50']:.3f} / {row['refuse p95']:.3f} | "
                  f"{row['answered']}/{visitors} | {len(row['failures'])} {row['failures'] or ''} |", flush=True)
        theta_seconds, other = theta_during_score_cam(url, [images.pop(), images.pop()])
        print(f"\nθ re-fusion of one visitor during another's explanation: {theta_seconds:.2f} s "
              f"(the other explanation took {other:.1f} s)")
        print(f"a click on an example (default settings), final maps: {example_click(url):.2f} s")


if __name__ == "__main__":
    main()
