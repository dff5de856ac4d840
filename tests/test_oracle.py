"""The bundled EfficientNet-Lite0 against independent implementations.

- pytorch-grad-cam (PyPI ``grad-cam``): its Grad-CAM equals METHOD.md's; its Score-CAM
  upsamples masks with ``align_corners=True`` and applies ReLU before upsampling, so it is
  compared exactly with those two choices switched, and loosely (correlation) as specified.
- A plain, unbatched transcription of METHOD.md written here (one forward per channel).
- Vision transformers (random weights): our automatic token maps against pytorch-grad-cam
  with the ``reshape_transform`` its documentation has users write by hand.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from fusioncam import Explanation, LoadedModel, explain, load_model
from fusioncam.explain import capture_evidence
from fusioncam.images import load_image
from fusioncam.region import region_map, score_channels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oracle_model() -> LoadedModel:
    """A private copy of the bundled model: pytorch-grad-cam wraps and hooks it."""
    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def cat_explanation(bundled_model: LoadedModel, cat_path) -> Explanation:
    return explain(bundled_model, str(cat_path))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize(("method", "oracle"), [("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus),
                                                ("xgradcam", XGradCAM), ("layercam", LayerCAM)])
def test_gradient_maps_equal_pytorch_grad_cam(oracle_model: LoadedModel, cat_explanation: Explanation,
                                              method: str, oracle: type) -> None:
    e = cat_explanation.evidence
    with oracle(model=oracle_model.module, target_layers=[oracle_model.module.bn2]) as cam:
        theirs = cam(input_tensor=e.x[None], targets=[ClassifierOutputTarget(e.target)])[0]
    np.testing.assert_allclose(e.gradient_map(method).numpy(), theirs, atol=1e-5)
    if method == "gradcam":
        np.testing.assert_allclose(cat_explanation.maps["gradcam"], theirs, atol=1e-6)


@pytest.fixture(scope="module")
def their_scorecam(oracle_model: LoadedModel, cat_explanation: Explanation) -> np.ndarray:
    x = cat_explanation.evidence.x[None]
    with ScoreCAM(model=oracle_model.module, target_layers=[oracle_model.module.bn2]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(cat_explanation.evidence.target)])[0]


def test_scorecam_equals_pytorch_grad_cam_with_its_mask_and_relu_order(
        bundled_model: LoadedModel, cat_explanation: Explanation, their_scorecam: np.ndarray) -> None:
    e = cat_explanation.evidence
    region = score_channels(bundled_model, e.x[None], e.baseline[None], e.activations[None],
                            torch.tensor([e.target]), chunk_size=16, mask_align_corners=True)
    ours = region_map(e.activations[None], region.scores, (224, 224), relu_before_upsample=True)[0].numpy()
    np.testing.assert_allclose(ours, their_scorecam, atol=1e-5)


def test_method_scorecam_is_close_to_pytorch_grad_cam(cat_explanation: Explanation,
                                                      their_scorecam: np.ndarray) -> None:
    assert correlation(cat_explanation.maps["scorecam"], their_scorecam) >= 0.99


def plain_fusion_cam(module: torch.nn.Module, x: torch.Tensor, target: int, theta: float = 10.0,
                     strength: float = 1.0) -> dict[str, np.ndarray]:
    """METHOD.md transcribed literally: one forward per channel, numpy percentile, mean baseline."""
    eps = 1e-8

    def n(m: torch.Tensor) -> torch.Tensor:
        m = m - m.min()
        return m / m.max() if m.max() > 0 else m

    def up(m: torch.Tensor) -> torch.Tensor:
        return F.interpolate(m[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]

    def logits(image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(image[None])[0]

    def prob(image: torch.Tensor) -> float:
        return float(torch.softmax(logits(image), 0)[target])

    store: dict[str, torch.Tensor] = {}

    def keep(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
        store["a"] = out.detach().clone()
        out.register_hook(lambda grad: store.update(g=grad))

    handle = module.bn2.register_forward_hook(keep)
    try:
        module.zero_grad()
        module(x[None])[0, target].backward()
    finally:
        handle.remove()
    a, g = store["a"][0], store["g"][0]

    l_grad = n(up(torch.relu((g.mean(dim=(1, 2))[:, None, None] * a).sum(0))))
    tau = float(np.percentile(l_grad.numpy(), theta))
    l_den = n(l_grad * (l_grad >= tau))

    scores = torch.empty(a.shape[0])
    for k in range(a.shape[0]):
        scores[k] = logits(x * n(up(a[k])))[target]
    alpha = torch.softmax(scores, 0)
    l_reg = n(torch.relu(sum(alpha[k] * up(a[k]) for k in range(a.shape[0]))))

    p_b = prob(torch.zeros_like(x))
    beta_den, beta_reg = prob(x * l_den) - p_b, prob(x * l_reg) - p_b
    den_hat, reg_hat = beta_den / (beta_den + beta_reg + eps), beta_reg / (beta_den + beta_reg + eps)
    l_comb = n(den_hat * l_den + reg_hat * l_reg)
    beta_comb = prob(x * l_comb) - p_b
    gamma1, gamma2 = beta_comb / (beta_comb + reg_hat + eps), reg_hat / (beta_comb + reg_hat + eps)
    l1, l2 = gamma1 * l_comb, gamma2 * l_reg
    s = torch.clamp(1 - strength * (l1 - l2).abs(), 0, 1)
    fused = n(s * torch.maximum(l1, l2) + (1 - s) * (l1 + l2) / 2)
    return {"gradcam": l_grad.numpy(), "denoised": l_den.numpy(), "scorecam": l_reg.numpy(),
            "combined": l_comb.numpy(), "fusion": fused.numpy(), "agreement": s.numpy()}


def test_fusion_cam_equals_a_plain_transcription_of_the_method(oracle_model: LoadedModel,
                                                               cat_explanation: Explanation) -> None:
    e = cat_explanation.evidence
    plain = plain_fusion_cam(oracle_model.module, e.x, e.target)
    for name, expected in plain.items():
        np.testing.assert_allclose(cat_explanation.maps[name], expected, atol=1e-4, err_msg=name)


def vit_reshape_transform(prefix: int, grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's documented ViT ``reshape_transform``, its prefix and grid written out by hand."""
    def transform(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), grid[0], grid[1], tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return transform


@pytest.mark.parametrize(("architecture", "prefix"), [("vit_tiny_patch16_224", 1),
                                                      ("deit_tiny_distilled_patch16_224", 2)])
def test_vit_gradcam_equals_pytorch_grad_cam_with_a_hand_written_reshape(architecture: str, prefix: int,
                                                                        cat_path) -> None:
    import timm

    torch.manual_seed(0)
    module = timm.create_model(architecture, pretrained=False)
    with torch.no_grad():               # timm's zero biases make random ViT maps nearly flat
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    model = LoadedModel.from_module(module, name=architecture, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert model.default_layer == "blocks.11.norm1"
    [evidence] = capture_evidence(model, [load_image(cat_path)])
    ours = evidence.gradient_map("gradcam").numpy()
    with GradCAM(model=module, target_layers=[module.blocks[-1].norm1],
                 reshape_transform=vit_reshape_transform(prefix, (14, 14))) as cam:
        theirs = cam(input_tensor=evidence.x[None], targets=[ClassifierOutputTarget(evidence.target)])[0]
    assert ours.max() - ours.min() > 0.5
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
