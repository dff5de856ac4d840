"""Many callers at once on one shared model: results equal the same request run alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fusioncam import MAP_NAMES, LoadedModel, explain


def test_threads_sharing_a_model_get_their_own_answers(tiny_model: LoadedModel, tiny_image: np.ndarray) -> None:
    images = [tiny_image, tiny_image[::-1].copy(), tiny_image[:, ::-1].copy(), 255 - tiny_image]
    requests = [(image, target, strength) for image, target, strength in
                zip(images * 2, [0, 1, 2, 3, 4, None, 1, 2], [0.5, 1, 2, 4, 0, 1, 3, 1], strict=True)]

    def run(request: tuple) -> dict[str, np.ndarray]:
        image, target, strength = request
        return explain(tiny_model, image, target=target, strength=strength, chunk_size=2).maps

    alone = [run(request) for request in requests]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(run, requests))
    for single, shared in zip(alone, together, strict=True):
        for name in MAP_NAMES:
            np.testing.assert_allclose(shared[name], single[name], atol=1e-6, err_msg=name)
    assert not any(m._forward_hooks for m in tiny_model.module.modules())
