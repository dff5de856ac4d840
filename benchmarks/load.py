"""Load on the app as a Space sees it: N simulated visitors with ``gradio_client`` against
``python app.py``, each explaining an image and then re-fusing it ten times (θ and λ moves).

Reports, per N, the p50/p95 of the time to the first map (Grad-CAM), the full explanation and a
re-fusion, and counts errors and queue refusals: every request must be answered or refused with
a sentence. A second scenario measures fair sharing: one visitor's θ change while another
visitor's Score-CAM runs on the same model (the old per-model lock made it wait for the whole
Score-CAM).

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
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted((ROOT / "assets").glob("*.jpg"))
REFUSIONS = [(theta, strength) for theta in (10, 20, 30, 40, 50) for strength in (1.5, 3.0)]   # ten moves
FIRST_MAP = 2   # the /explain outputs' index of the Grad-CAM overlay


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


def visitor(url: str, image: Path, record: dict[str, list], lock: threading.Lock) -> None:
    """One visitor: explain ``image`` (timing the first map and the whole run), then ten re-fusions."""
    try:
        client = Client(url, verbose=False)
        started = time.perf_counter()
        job = client.submit(handle_file(str(image)), api_name="/explain")
        first = None
        while not job.done():
            if first is None and any(output[FIRST_MAP] for output in job.outputs() if output):
                first = time.perf_counter() - started
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
            record["whole"].append(whole)
            record["refuse"].extend(refusions)
    except Exception as error:   # every failure is counted, by its kind: nothing is lost silently
        kind = "refused (queue full)" if "queue" in str(error).lower() else f"error: {type(error).__name__}"
        with lock:
            record["failures"].append(f"{kind}: {str(error)[:120]}")


def load_row(url: str, visitors: int) -> dict[str, object]:
    """Run ``visitors`` visitors at once; percentiles in seconds."""
    record: dict[str, list] = {"first": [], "whole": [], "refuse": [], "failures": []}
    lock = threading.Lock()
    threads = [threading.Thread(target=visitor, args=(url, IMAGES[i % len(IMAGES)], record, lock))
               for i in range(visitors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {"N": visitors, **{f"{name} p{q}": pct(record[name], q) for name in ("first", "whole", "refuse")
                              for q in (50, 95)},
            "answered": len(record["whole"]), "failures": record["failures"]}


def theta_during_score_cam(url: str) -> tuple[float, float]:
    """Seconds of one visitor's θ re-fusion while another visitor's Score-CAM runs, and the
    length of that other explanation."""
    waiting = Client(url, verbose=False)
    waiting.predict(handle_file(str(IMAGES[0])), api_name="/explain")
    busy = Client(url, verbose=False)
    started = time.perf_counter()
    job = busy.submit(handle_file(str(IMAGES[1])), api_name="/explain")
    while not any(output[FIRST_MAP] for output in job.outputs() if output):   # Score-CAM has begun
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
    args = parser.parse_args()
    with running_app(args.app_dir) as url:
        Client(url, verbose=False).predict(handle_file(str(IMAGES[0])), api_name="/explain")   # warm
        print("| visitors | first map p50 / p95 (s) | full explanation p50 / p95 (s) | re-fusion p50 / p95 (s) "
              "| answered | errors or refusals |")
        print("|---|---|---|---|---|---|")
        for visitors in args.visitors:
            row = load_row(url, visitors)
            print(f"| {visitors} | {row['first p50']:.2f} / {row['first p95']:.2f} | {row['whole p50']:.1f} / "
                  f"{row['whole p95']:.1f} | {row['refuse p50']:.3f} / {row['refuse p95']:.3f} | "
                  f"{row['answered']}/{visitors} | {len(row['failures'])} {row['failures'] or ''} |", flush=True)
        theta_seconds, other = theta_during_score_cam(url)
        print(f"\nθ re-fusion of one visitor during another's explanation: {theta_seconds:.2f} s "
              f"(the other explanation took {other:.1f} s)")


if __name__ == "__main__":
    main()
