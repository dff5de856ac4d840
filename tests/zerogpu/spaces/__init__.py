"""A test-only stand-in for Hugging Face's ``spaces`` package on ZeroGPU.

What it reproduces of ``spaces`` 0.51 (``zero/wrappers.py``): every call of a ``@spaces.GPU``
function runs in a **forked** worker process; its arguments are **pickled** on the way in and
its result (or exception) on the way back — each yielded item, for a generator function
(``generator_function_wrapper``), so a closure, lock, module or open file among them
fails exactly as it does on a real Space; a quota failure reaches the caller as ``gr.Error``.

What it leaves out (said plainly, so nobody reads more into a green test): no GPU and no CUDA
(the worker runs on the CPU), no worker reuse between calls (a fresh fork per call), and no
forwarding of Gradio's progress context into the worker (progress updates made inside it are
lost; the real package forwards them).

Test hooks, through the environment: ``FUSIONCAM_TEST_ZEROGPU_LOG`` — a file to which each call
appends the function's name; ``FUSIONCAM_TEST_ZEROGPU_QUOTA`` — a file whose existence makes
every call fail as an exhausted quota does.
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import pickle
from collections.abc import Callable
from typing import Any

QUOTA_MESSAGE = "You have exceeded your GPU quota (60s requested vs. 0s left). Try again in 13:53:59."


def GPU(function: Callable | None = None, duration: int = 60) -> Callable:
    """``@spaces.GPU`` or ``@spaces.GPU(duration=…)``: run ``function`` in a forked worker."""
    if function is None:
        return functools.partial(GPU, duration=duration)

    streams = inspect.isgeneratorfunction(function)

    def start(args: tuple, kwargs: dict) -> tuple[Any, Any]:
        _log(function.__name__)
        quota = os.environ.get("FUSIONCAM_TEST_ZEROGPU_QUOTA")
        if quota and os.path.exists(quota):
            import gradio as gr

            raise gr.Error(QUOTA_MESSAGE, title="ZeroGPU quota exceeded")
        payload = pickle.dumps((args, kwargs))          # what the real package puts on its queue
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_work, args=(function, payload, sender, streams), daemon=True)
        worker.start()
        sender.close()
        return worker, receiver

    def answers(worker: Any, receiver: Any) -> Any:
        try:
            while True:
                try:
                    kind, value = pickle.loads(receiver.recv_bytes())
                except EOFError:
                    raise RuntimeError(f"the GPU worker for {function.__name__} died") from None
                if kind == "raise":
                    raise value
                yield kind, value
                if kind == "return":
                    return
        finally:
            worker.join()

    if streams:
        @functools.wraps(function)
        def on_gpu_streaming(*args: Any, **kwargs: Any) -> Any:
            for kind, value in answers(*start(args, kwargs)):
                if kind == "yield":
                    yield value

        return on_gpu_streaming

    @functools.wraps(function)
    def on_gpu(*args: Any, **kwargs: Any) -> Any:
        for _kind, value in answers(*start(args, kwargs)):
            return value

    return on_gpu


def _work(function: Callable, payload: bytes, sender: Any, streams: bool) -> None:
    """The forked worker: unpickle the arguments, run, pickle each yielded item, the result or the
    exception back."""
    args, kwargs = pickle.loads(payload)
    try:
        if streams:
            for item in function(*args, **kwargs):
                sender.send_bytes(pickle.dumps(("yield", item)))
            answer = pickle.dumps(("return", None))
        else:
            answer = pickle.dumps(("return", function(*args, **kwargs)))
    except BaseException as error:
        answer = pickle.dumps(("raise", error))
    sender.send_bytes(answer)
    sender.close()


def _log(name: str) -> None:
    path = os.environ.get("FUSIONCAM_TEST_ZEROGPU_LOG")
    if path:
        with open(path, "a") as log:
            log.write(name + "\n")
