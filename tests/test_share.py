"""Shared links: the bounded, expiring store, the absolute link as the visitor's browser sees the app,
opening a link in the same process (API), and in another browser (Chromium)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

gr = pytest.importorskip("gradio")
client_module = pytest.importorskip("gradio_client")

from starlette.requests import Request as StarletteRequest  # noqa: E402
from test_browser import SLOW_MS, app_in_chromium, wait_for_new_map, wait_for_summary  # noqa: E402

from fusioncam.ui import compare_handlers, handlers, share_handlers, sharing, text  # noqa: E402
from fusioncam.ui.sharing import SHARING, TOKEN_SHAPE, ShareStore, public_root  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CAT = ASSETS / "cat.jpg"
CHEAP = {"region_method": "scorecam-topk", "top_k": 16}


class Clock:
    """A hand-driven clock for the store's expiry."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_random_and_reopen_only_their_own_entry() -> None:
    store = ShareStore(capacity=8)
    first, second = object(), object()
    token_a, _ = store.put("explain", first)
    token_b, _ = store.put("explain", second)
    assert token_a != token_b and TOKEN_SHAPE.fullmatch(token_a) and TOKEN_SHAPE.fullmatch(token_b)
    assert store.get(token_a).value is first and store.get(token_b).value is second
    assert store.put("explain", first)[0] == token_a                      # the same kept copy: one link
    tampered = token_a[:-1] + ("A" if token_a[-1] != "A" else "B")
    for bad in (tampered, token_a + "x", "", None, 12, "../../etc/passwd", token_a.upper() if token_a.upper() != token_a
                else "x" * 24):
        assert store.get(bad) is None


def test_store_is_bounded_least_recently_used_first_and_entries_expire() -> None:
    clock = Clock()
    store = ShareStore(capacity=3, ttl_s=3600, clock=clock)
    tokens = [store.put("explain", object())[0] for _ in range(3)]
    assert store.get(tokens[0]) is not None                              # now the most recently used
    newest, entry = store.put("compare", object())
    assert entry.expires == clock.now + 3600
    assert store.get(tokens[1]) is None and len(store) == 3               # the least recently used went
    clock.now += 3599
    assert store.get(newest) is not None
    clock.now += 1
    assert store.get(newest) is None and store.get(tokens[0]) is None and len(store) == 0


def test_a_link_lives_no_longer_than_the_session_it_was_copied_from() -> None:
    import app

    assert sharing.SHARE_TTL_S <= app.SESSION_TTL_S
    assert sharing.SHARED.capacity <= app.LAUNCH_OPTIONS["state_session_capacity"]


def fake_request(url: str, headers: dict[str, str] | None = None, root_path: str = "") -> gr.Request:
    """A ``gr.Request`` around a Starlette request for ``url`` with ``headers``, as a queued event sees it."""
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    path, _, query = ("/" + path).partition("?")
    raw_headers = [(b"host", host.encode())] + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {"type": "http", "scheme": scheme, "server": (host.split(":")[0], 80), "path": path, "root_path": root_path,
             "query_string": query.encode(), "headers": raw_headers, "method": "POST"}
    return gr.Request(request=StarletteRequest(scope), session_hash="test-session")


@pytest.mark.parametrize(("url", "headers", "root_path", "expected"), [
    ("http://127.0.0.1:7860/gradio_api/queue/join", {}, "", "http://127.0.0.1:7860"),
    ("http://10.0.0.5:7860/gradio_api/queue/join", {"x-forwarded-host": "owner-demo.hf.space",
                                                     "x-forwarded-proto": "https"}, "", "https://owner-demo.hf.space"),
    ("http://localhost:7860/explorer/gradio_api/queue/join", {"x-forwarded-proto": "https"}, "/explorer",
     "https://localhost:7860/explorer"),
])
def test_the_link_is_absolute_as_the_browser_sees_the_app(url: str, headers: dict[str, str], root_path: str,
                                                          expected: str) -> None:
    assert public_root(fake_request(url, headers, root_path)) == expected


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """The app in-process and one gradio_client session that has explained the cat (cheap path)."""
    import app

    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None)
    try:
        session = client_module.Client(app.demo.local_url, verbose=False)
        session.predict(client_module.handle_file(str(CAT)), target="282", theta=20, **CHEAP, api_name="/explain")
        yield session
    finally:
        app.demo.close()


def token_of(link: str) -> str:
    assert "?share=" in link and link.count("?") == 1
    return link.split("?share=", 1)[1]


@pytest.mark.slow
def test_share_endpoint_gives_an_absolute_link_holding_only_a_token(client: Any) -> None:
    link, note = client.predict(api_name="/share")
    assert link.startswith(client.src.rstrip("/") + "/?share=")
    assert TOKEN_SHAPE.fullmatch(token_of(link))
    assert "UTC" in note and "256" in note
    again, _ = client.predict(api_name="/share")
    assert again == link                                                  # nothing new to keep


def test_sharing_needs_an_explanation(client: Any) -> None:
    other = client_module.Client(client.src, verbose=False)
    with pytest.raises(client_module.exceptions.AppError, match="Explain an image first"):
        other.predict(api_name="/share")


def opened(token: str | None) -> dict[str, Any]:
    """:func:`share_handlers.open_link`'s outputs for a page opened with ``?share=token``, by name."""
    request = gr.Request(session_hash="visitor", query_params={} if token is None else {"share": token})
    names = [*handlers.EXPLAIN_OUTPUTS, *share_handlers.RESTORED_INPUTS, *share_handlers.SHARE_OUTPUTS,
             *(f"compare-{name}" for name in compare_handlers.OPEN_OUTPUTS), "tab"]
    return dict(zip(names, share_handlers.open_link(request), strict=True))


@pytest.mark.slow
def test_opening_a_link_restores_that_explanation_for_another_visitor(client: Any) -> None:
    link, _ = client.predict(api_name="/share")
    page = opened(token_of(link))
    report = page["report"]
    assert report["class_index"] == 282 and report["params"]["theta"] == 20
    assert "tiger cat" in page["summary"] and "kept until" in page["share-note"]
    assert page["target-class"]["value"] == "282" and page["region-method"] == "scorecam-topk" and page["top-k"] == 16
    assert page["theta"] == 20 and page["model"] == report["model"]
    fusion = page["map-fusion"]
    assert fusion["l1"] and fusion["l2"] and fusion["generation"] > 0
    assert Path(page["image"]).is_file()
    assert page["session"].request.image_digest == share_handlers.file_digest(page["image"])


def test_a_tampered_unknown_or_absent_token_opens_the_empty_explorer() -> None:
    for token in ("A" * 24, "not a token", "x" * 500):
        page = opened(token)
        assert page["summary"] == f"### {text.BAD_LINK}"
        assert all(value == gr.skip() for name, value in page.items() if name != "summary")   # nothing else changes
    untouched = opened(None)
    assert all(value == gr.skip() for value in untouched.values())


@pytest.mark.slow
def test_sharing_off_makes_no_link_and_opens_none(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    link, _ = client.predict(api_name="/share")
    monkeypatch.setenv(SHARING, "0")
    with pytest.raises(client_module.exceptions.AppError, match="turned off"):
        client.predict(api_name="/share")
    assert opened(token_of(link))["summary"] == f"### {text.SHARE_OFF}"
    with gr.Blocks():
        made = share_handlers.share_controls("share")
    assert not made["share"].visible and not made["share-url"].visible and made["share-note"].value == text.SHARE_OFF


# --- the real page: one visitor shares, another opens the link in a fresh browser -------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[tuple[Any, str]]:
    """Headless Chromium and the app's URL (launched in-process)."""
    with app_in_chromium() as launched:
        yield launched


def headline(summary: str) -> str:
    """The summary's "Explaining CLASS (class N), model confidence P" line (a progress timer may precede it)."""
    return next(line for line in summary.splitlines() if line.startswith("Explaining"))


@pytest.mark.browser
@pytest.mark.slow
def test_a_shared_link_reopens_the_explanation_in_another_browser(browser: tuple[Any, str]) -> None:
    chromium, url = browser
    sharer = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    sharer.goto(url)
    sharer.locator("#theta input[type=number]").fill("20")
    sharer.locator("#theta input[type=number]").press("Enter")
    sharer.locator("#input-image input[type=file]").set_input_files(str(CAT))
    summary = wait_for_summary(sharer, "disagree")
    wait_for_new_map(sharer, "fusion", None)
    sharer.locator("#share").click()
    sharer.wait_for_function("() => document.querySelector('#share-url textarea, #share-url input').value"
                             ".includes('?share=')", timeout=SLOW_MS)
    link = sharer.locator("#share-url textarea, #share-url input").first.input_value()
    assert link.startswith(url.rstrip("/") + "/?share=") and "UTC" in sharer.locator("#share-note").inner_text()

    visitor = chromium.new_context(viewport={"width": 1400, "height": 1000}).new_page()   # no cookies, no session
    visitor.goto(link)
    visitor.wait_for_selector("#summary", timeout=SLOW_MS)
    for name in ("gradcam", "scorecam", "fusion", "agreement"):
        wait_for_new_map(visitor, name, None)
    opened_summary = wait_for_summary(visitor, "disagree")
    assert headline(opened_summary) == headline(summary)                        # same class, model, confidence
    assert "θ = 20" in opened_summary and "kept until" in visitor.locator("#share-note").inner_text()
    assert visitor.locator("#theta input[type=number]").input_value() == "20"
    assert visitor.locator("#input-image img").count() == 1                     # the image, too
    card = "document.querySelector('#map-fusion .fc-live').dataset"
    before = visitor.evaluate(f"({card}).paints")
    strength = visitor.locator("#strength input[type=number]")
    strength.fill("3")
    strength.press("Enter")
    visitor.wait_for_function(f"() => ({card}).strength === '3' && ({card}).paints !== '{before}'", timeout=SLOW_MS)
    wait_for_summary(visitor, "At λ = 3 ")                                      # the visitor's own session learnt λ
    visitor.screenshot(path="/tmp/fusioncam-shared-link.png", full_page=True)

    broken = chromium.new_context().new_page()
    broken.goto(link[:-3] + "zzz")
    broken.wait_for_selector("#summary", timeout=SLOW_MS)
    wait_for_summary(broken, "expired or is not valid")
    broken.screenshot(path="/tmp/fusioncam-bad-link.png", full_page=True)
    assert broken.evaluate(f"({card}).state") == "empty" and not broken.locator("#map-scorecam img").count()
