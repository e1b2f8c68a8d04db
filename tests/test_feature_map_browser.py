"""The interactive map in a real headless Chromium (Debian's package, driven by Playwright), with no network.

Checks: the page loads with every non-file request blocked and none is made; the search finds a label; hovering
a point shows its id and label; clicking a point (and a search result) shows that feature's card with its top
example and the activating token highlighted; hostile labels stay text.

`make test` installs Debian's chromium when it is missing (as root, with apt). The test skips only where it
cannot be installed (not root and no /usr/bin/chromium), and says why; as root it fails instead of skipping.
Without the playwright package (a dev dependency) it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_feature_map import clustered_sae

from r1_plugin.features import FeatureDB
from r1_plugin.features.feature_map import MapParams, feature_map
from r1_plugin.features.render import visible
from r1_plugin.testing.feature_db import HOSTILE_LABELS, build_tiny_feature_db

CHROMIUM = Path(os.environ.get("R1_PLUGIN_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _require_browser() -> None:
    """Playwright is a dev dependency (fail without it); Chromium may be absent only when not root (skip, say why)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: it is part of the dev extra (pip install -e '.[dev]')")
    if CHROMIUM.is_file():
        return
    reason = f"headless-browser test needs {CHROMIUM} (Debian's chromium package)"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.fail(reason + ": running as root, so `make test` should have installed it (apt-get install chromium)")
    print(f"\nSKIP: {reason}; not root, so it cannot be installed here (as root, `make test` installs it)")
    pytest.skip(reason + " and this user cannot install it")


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    """A map of a 72-feature SAE with a tiny Goodfire-schema feature database (hostile labels and tokens)."""
    out = tmp_path_factory.mktemp("map")
    built = build_tiny_feature_db(out / "db", n_features=40)
    with FeatureDB(labels=built.labels_path, activations=built.activations_path) as db:
        result = feature_map(
            clustered_sae(), out, db=db, top_n=3, context=4,
            params=MapParams(seed=0, n_neighbors=8, n_epochs=60), progress=False,
        )  # fmt: skip
        labels = {fid: db.label(fid) for fid in db.feature_ids() if fid < 72}
        top = {fid: db.top_examples(fid, k=1, context=4)[0] for fid in range(40)}
    return result.html, labels, top


@pytest.fixture(scope="module")
def browser_page(page_file):
    _require_browser()
    from playwright.sync_api import sync_playwright

    html, _, _ = page_file
    requests: list[str] = []
    errors: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})

        def block(route):
            if not route.request.url.startswith("file://"):
                requests.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", block)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: None if r.url.startswith("file://") else requests.append(r.url))
        page.goto(html.resolve().as_uri())
        page.wait_for_function("window.featureMap !== undefined")
        yield page, requests, errors, dialogs
        context.close()
        browser.close()


def test_page_loads_offline_without_any_request(browser_page, page_file):
    page, requests, errors, dialogs = browser_page
    assert page.evaluate("window.featureMap.n") == 72
    assert requests == [] and errors == [] and dialogs == []
    assert page.text_content("#fm-count") == ""  # nothing searched yet


def test_search_finds_labels_like_the_database(browser_page, page_file):
    page, requests, errors, _ = browser_page
    _, labels, _ = page_file
    fid = 7
    words = labels[fid].lower().split()[:2]
    page.fill("#fm-search", " ".join(words))
    got = {int(v) for v in page.eval_on_selector_all("#fm-results li", "els => els.map(e => e.dataset.feature)")}
    expected = {f for f, label in labels.items() if all(w in label.lower() for w in words)}
    assert fid in got and got == expected
    # a hostile label is listed as text, never parsed as HTML
    page.fill("#fm-search", "alert(1)")
    items = page.eval_on_selector_all("#fm-results li", "els => els.map(e => e.textContent)")
    assert items == [f"#1{HOSTILE_LABELS[1]}"]
    assert page.locator("#fm-results script").count() == 0
    page.fill("#fm-search", "")
    assert requests == [] and errors == []


def _isolated_feature(page, candidates) -> int:
    """The candidate whose point is farthest (on screen) from every other point: a click on it is unambiguous."""
    pos = page.evaluate("ids => ids.map(i => window.featureMap.position(i))", list(range(72)))

    def gap(i: int) -> float:
        return min((pos[i]["x"] - p["x"]) ** 2 + (pos[i]["y"] - p["y"]) ** 2 for j, p in enumerate(pos) if j != i)

    return max(candidates, key=gap)


def _card_matches(page, fid: int, labels, top) -> None:
    """The card shows the feature's id, label and, first, its strongest example with the token in a <mark>."""
    assert page.text_content("#fm-card h2") == f"Feature {fid}"
    assert page.text_content("#fm-card .label") == labels[fid]
    first = page.locator("#fm-card .ex").first
    example = top[fid]
    assert first.locator("mark").count() == 1
    assert first.locator("mark").text_content() == visible(example.token)
    assert float(first.locator(".s").text_content()) == pytest.approx(example.strength, abs=1e-4)
    assert first.text_content().endswith("".join(visible(t) for t in example.tokens))


def test_hover_and_click_on_a_point_show_that_features_card(browser_page, page_file):
    page, requests, errors, _ = browser_page
    _, labels, top = page_file
    fid = _isolated_feature(page, [f for f in range(2, 40)])
    pos = page.evaluate("i => window.featureMap.position(i)", fid)
    page.mouse.move(pos["x"], pos["y"])
    assert page.text_content("#fm-tip") == f"#{fid}  {labels[fid]}"
    page.mouse.click(pos["x"], pos["y"])
    _card_matches(page, fid, labels, top)
    assert requests == [] and errors == []


def test_click_on_a_search_result_shows_its_card(browser_page, page_file):
    page, requests, errors, dialogs = browser_page
    _, labels, top = page_file
    fid = 11
    page.fill("#fm-search", labels[fid])
    page.click(f"#fm-results li[data-feature='{fid}']")
    _card_matches(page, fid, labels, top)
    assert requests == [] and errors == [] and dialogs == []
