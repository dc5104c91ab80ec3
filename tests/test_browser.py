"""What a person sees: the real optuna-dashboard and the HTML report in a real headless Chromium.

Debian's ``chromium`` (``.ci/run`` installs it) driven by playwright through ``executable_path``:
playwright's own browser download needs the internet. One tiny classification study and one tiny
SFT study in one store, served by the real dashboard on 127.0.0.1; every page is screenshotted to
the test's tmp dir, and to ``$LLM_DOE_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from llm_doe.report import main as report
from llm_doe.search import main as search
from tests.conftest import TINY, http_get, serve_dashboard, store_args

pytestmark = pytest.mark.browser

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")

SFT = ["+study=sft_smoke", "data.train_size=32", "data.val_size=16", "data.test_size=16", "data.max_length=64",
       "runtime.progress=false", "runtime.num_threads=1", "study.n_trials=2"]
#: Long enough for one busy core: the dashboard's bundle is 5 MB of JavaScript to parse.
WAIT_MS = 240_000


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Any]:
    """``lr`` (3 classification trials, one parameter) and ``sft`` (2 causal-LM trials) in one store."""
    tmp = tmp_path_factory.mktemp("browser")
    lr = ["+study=lr_sweep", *TINY, *store_args(tmp, "lr"), "study.n_trials=3"]
    assert search(lr) == 0
    url = f"sqlite:///{tmp}/lr.db"
    sft = [*SFT, *store_args(tmp, "sft"), f"storage.url={url}"]
    assert search(sft) == 0
    # Seven searched parameters: a rerun command whose study.space is one 250-character word.
    hp = ["+study=hparam_sweep", *TINY, *store_args(tmp, "hp"), f"storage.url={url}", "study.n_trials=2"]
    assert search(hp) == 0
    return {"tmp": tmp, "url": url, "art": tmp / "art", "args": {"lr": lr, "sft": sft, "hp": hp}}


@pytest.fixture(scope="module")
def dashboard(studies) -> Iterator[dict[str, Any]]:
    """The dashboard's base URL and each study's id."""
    with serve_dashboard(studies["url"], studies["art"]) as base:
        summaries = json.loads(http_get(f"{base}/api/studies"))["study_summaries"]
        yield {"base": base, "ids": {s["study_name"]: s["study_id"] for s in summaries}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("no chromium on PATH: apt-get install chromium (.ci/run does)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


def new_page(browser: Any) -> Any:
    """A page that records console errors and uncaught exceptions in ``page.errors``."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    return page


@pytest.fixture(scope="module")
def site(browser, dashboard) -> Iterator[Any]:
    """One dashboard page for the module: its 5 MB of JavaScript loads once, and each test moves
    within the app (as a person clicking does) with :func:`visit`."""
    page = new_page(browser)
    page.goto(f"{dashboard['base']}/dashboard", wait_until="commit")
    page.locator("#dashboard").wait_for(state="attached")
    yield page
    page.context.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    page = new_page(browser)
    yield page
    page.context.close()


def visit(site: Any, path: str) -> Any:
    """Show ``/dashboard/<path>`` in the already loaded app (its router follows the history)."""
    site.errors.clear()  # each page's own console errors
    site.evaluate("url => { history.pushState({}, '', url); dispatchEvent(new PopStateEvent('popstate')); }",
                  f"/dashboard/{path}")
    return site


def shoot(page: Any, name: str, tmp_path: Path) -> Path:
    """A full-page screenshot in the test's tmp dir, copied to ``$LLM_DOE_SCREENSHOTS`` when set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("LLM_DOE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)
    return path


def fits_width(page: Any) -> bool:
    """Nothing runs off the right edge: the page is no wider than the window."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def overflowing(root: Any) -> list[str]:
    """The elements inside ``root`` that reach past its right edge, and the ``pre`` blocks that scroll
    sideways (a command only a scroll bar shows is cut off for a reader too); a wide table inside a
    container made to scroll (the report's trials table) is meant to."""
    return root.evaluate("""root => {
        const edge = root.getBoundingClientRect().right + 1;
        const inScroller = e => {
            for (let a = e.parentElement; a && a !== root; a = a.parentElement) {
                if (a.tagName !== 'PRE' && ['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return true;
            }
            return false;
        };
        return [...root.querySelectorAll('*')]
            .filter(e => !inScroller(e))
            .filter(e => e.getBoundingClientRect().right > edge || (e.tagName === 'PRE' && e.scrollWidth > e.clientWidth + 1))
            .map(e => e.tagName + ': ' + e.textContent.slice(0, 80));
    }""")


def preview_rows(page: Any, filename: str) -> list[str]:
    """Open the dashboard's table preview of a trial artifact; its column names."""
    card = page.locator(".MuiCard-root", has_text=filename)
    card.get_by_label("show artifact table").click()
    page.locator("table th").first.wait_for()
    header = page.locator("table th").evaluate_all("cells => cells.map(c => c.textContent)")
    return [re.sub(r"sorted (ascending|descending)$", "", h).strip() for h in header]


def close_preview(page: Any) -> None:
    page.keyboard.press("Escape")
    page.locator("table th").first.wait_for(state="detached")


def open_best_trial(studies: dict, dashboard: dict, site: Any, name: str) -> Any:
    """The dashboard's page of study ``name``'s best trial, loaded."""
    best = optuna.load_study(study_name=name, storage=studies["url"]).best_trial
    page = visit(site, f"studies/{dashboard['ids'][name]}/trials?numbers={best.number}")
    page.get_by_text(f"Trial {best.number} (trial_id=").wait_for()
    return page


def test_study_page_draws_history_and_intermediate_values_named_by_the_metric(studies, dashboard, site, tmp_path):
    page = visit(site, f"studies/{dashboard['ids']['lr']}")
    for plot in ("#plot-history", "#graph-intermediate-values"):
        page.locator(f"{plot} .main-svg").first.wait_for()
        # Plotly draws the axes first and the traces a moment later (seconds on a busy machine).
        page.locator(f"{plot} .scatterlayer .trace").first.wait_for()  # times out if no trace is drawn
    page.get_by_text("Study User Attributes").wait_for()
    shoot(page, "dashboard_study_lr", tmp_path)
    assert "val_loss" in page.locator("#plot-history .g-ytitle").text_content()  # set_metric_names
    assert page.get_by_text("Objective 0").count() == 0
    # The study's attributes, as a person reads them: the goal, each searched range, the best value.
    attrs = page.locator("table", has_text="Key").first.inner_text()  # its first page: 5 rows
    assert "minimize val_loss" in attrs and "float 1e-05 .. 0.001 (log)" in attrs
    best = optuna.load_study(study_name="lr", storage=studies["url"]).best_trial
    assert f"val_loss {best.value:.4g} (trial #{best.number})" in attrs
    assert fits_width(page)
    assert not page.errors, page.errors


def test_trial_page_shows_roc_image_and_previews_metrics_and_roc(studies, dashboard, site, tmp_path):
    page = open_best_trial(studies, dashboard, site, "lr")
    image = page.locator("img[alt='roc.png']")
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shoot(page, "dashboard_trial_lr", tmp_path)
    assert preview_rows(page, "roc.csv")[:3] == ["fpr", "tpr", "threshold"]
    close_preview(page)
    header = preview_rows(page, "metrics.jsonl")
    assert {"step", "val_loss", "accuracy", "roc_auc"} <= set(header)
    shoot(page, "dashboard_trial_lr_metrics_preview", tmp_path)
    close_preview(page)
    assert fits_width(page)
    assert not page.errors, page.errors


def test_sft_trial_page_previews_its_generations(studies, dashboard, site, tmp_path):
    page = open_best_trial(studies, dashboard, site, "sft")
    assert preview_rows(page, "generations.csv") == ["prompt", "reference", "generated"]
    assert page.locator("table tbody tr").count() >= 1
    shoot(page, "dashboard_trial_sft_generations", tmp_path)
    close_preview(page)
    assert not page.errors, page.errors


@pytest.mark.parametrize("name", ["lr", "sft", "hp"])
def test_note_shows_the_best_trial_rendered_and_within_the_page(studies, dashboard, site, tmp_path, name):
    """At 1400 px the whole note shows: ``hp``'s rerun command (a study.space of seven parameters)
    widened the page to 3465 px and cut off the goal line and the command (issue 22 A9)."""
    best = optuna.load_study(study_name=name, storage=studies["url"]).best_trial
    page = visit(site, f"studies/{dashboard['ids'][name]}/note")
    note = page.get_by_role("heading", name=name, exact=True).locator("xpath=..")
    note.get_by_text("Best trial").wait_for()
    shoot(page, f"dashboard_note_{name}", tmp_path)
    text = note.inner_text()
    assert f"Trial #{best.number}: val_loss" in text
    assert "**" not in text and "|---" not in text and "```" not in text  # rendered, not raw markdown
    assert note.locator("table").count() >= 2 and note.locator("pre").count() == 1
    assert fits_width(page), "the note runs off the right edge"
    assert overflowing(note.element_handle()) == []
    assert not page.errors, page.errors


@pytest.mark.parametrize("name", ["lr", "sft", "hp"])
def test_report_works_offline_from_the_file(studies, page, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"report_{name}.html"
    assert report([*studies["args"][name], "--out", str(out)]) == 0
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
               else route.abort())
    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    assert page.locator("img").count() >= 2  # learning curves, objective against the parameter
    decoded = page.evaluate("[...document.images].map(img => img.complete && img.naturalWidth > 0)")
    assert all(decoded), decoded
    shoot(page, f"report_{name}", tmp_path)
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    assert not page.errors, page.errors
    body = page.locator("body").inner_text()
    if name == "lr":  # one searched parameter: no importance to draw
        section = page.locator("h2", has_text="Parameter importance").locator("xpath=following-sibling::*[1]")
        assert "with one, its importance is 1.0" in section.inner_text() and section.locator("img").count() == 0
    assert "Best trial" in body
    # The training loss over optimizer steps (issue 22 A9), drawn; the rerun command wraps.
    loss = page.locator("h2", has_text="Training loss").locator("xpath=following-sibling::*[1]")
    assert loss.locator("img").count() == 1
    assert fits_width(page) and overflowing(page.locator("body").element_handle()) == []
