"""Every page a user opens, in headless Chromium, after the scratch pipeline (tests/pipelines/conftest.py).

Each server (MLflow UI, Feast UI, the scoring service) starts on a free loopback port; the browser resolves
no other host, so a page that loads a script or style from a CDN renders without it here, as it would
offline. Checks read what a person would see: tables, figures, the `champion` alias, shaded tokens.
Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); without them the module skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import paths
from tests.scratch import champions, dvc, open_gates
from tests.services import free_port

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("headless Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 60


@pytest.fixture(scope="module")
def site(scratch: Path) -> Path:
    """The scratch project after a whole `dvc repro`, with a champion for every dataset."""
    open_gates(scratch)
    dvc(scratch, "repro")
    assert None not in champions(scratch).values()
    return scratch


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # no CDN, as offline
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@contextlib.contextmanager
def server(command: list[str], cwd: Path, ready_path: str, what: str, env: dict[str, str] | None = None
           ) -> Iterator[str]:
    """`command` (given `{port}`) on a free loopback port until the block ends; its base URL once `ready_path`
    answers. One that exits or never answers fails naming the port and the end of its log."""
    port = free_port()
    log = cwd / f".{what.replace(' ', '_')}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([part.format(port=port) for part in command], cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 3 * WAIT_S
        while True:
            try:
                urllib.request.urlopen(url + ready_path, timeout=5).close()
                break
            except OSError as err:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{what} did not start on port {port} ({err}); the end of its log:\n"
                                f"{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def wait_for(browser: webdriver.Chrome, css: str, count: int = 1) -> list:
    """The elements matching `css`, once at least `count` are there (the page's scripts render them)."""
    WebDriverWait(browser, WAIT_S).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, css)) >= count)
    return browser.find_elements(By.CSS_SELECTOR, css)


def wait_for_text(browser: webdriver.Chrome, text: str) -> str:
    """The page's visible text, once it shows `text`."""
    WebDriverWait(browser, WAIT_S).until(lambda b: text in b.find_element(By.TAG_NAME, "body").text)
    return browser.find_element(By.TAG_NAME, "body").text


def test_the_validation_pages_list_each_expectation_and_its_result(site: Path, browser: webdriver.Chrome) -> None:
    for dataset in ("alpha", "beta"):
        browser.get((site / paths.validation_dir(dataset) / "index.html").as_uri())
        rows = wait_for(browser, "table tbody tr", count=10)
        assert {row.find_elements(By.TAG_NAME, "td")[1].text for row in rows} == {"passed"}
        assert "text_id is unique" in browser.find_element(By.TAG_NAME, "body").text


def test_the_report_shows_its_figures_and_tables(site: Path, browser: webdriver.Chrome) -> None:
    browser.get((site / paths.REPORT_DIR / "index.html").as_uri())
    figures = wait_for(browser, "figure svg")
    assert all(figure.size["width"] > 100 and figure.size["height"] > 50 for figure in figures)
    assert len(wait_for(browser, "table")) >= 5
    assert "What each registered probe relies on" in browser.find_element(By.TAG_NAME, "body").text


def test_dvc_plots_show_renders_every_plot_offline(site: Path, browser: webdriver.Chrome) -> None:
    from pipelines.web_assets import configure_dvc_plots

    configure_dvc_plots(site)  # what `make install` does for the checkout
    out = dvc(site, "plots", "show", "-o", "dvc_plots")
    page = site / "dvc_plots" / "index.html"
    assert page.is_file(), out
    browser.get(page.as_uri())
    expected = page.read_text().count("vegaEmbed(")
    assert expected >= 3
    rendered = wait_for(browser, ".vega-embed .marks", count=expected)  # Vega draws into svg.marks or canvas.marks
    assert all(chart.size["width"] > 50 for chart in rendered)
    assert "cdn.jsdelivr" not in page.read_text()


def test_the_mlflow_registry_tells_the_promotion_story(site: Path, browser: webdriver.Chrome) -> None:
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1",
               "--backend-store-uri", "sqlite:///mlflow.db"]
    with server(command, site, "/health", "the MLflow UI") as url:
        for dataset, version in champions(site).items():
            browser.get(f"{url}/#/models/saefs-{dataset}/versions/{version}")
            text = wait_for_text(browser, f"Promotion of saefs-{dataset} version {version}: promoted to champion")
            assert "@ champion" in text and "Features: service" in text and "data/prepared/" in text
            assert "saefs.gates" in text and "passed" in text
            if version > 1:
                browser.get(f"{url}/#/models/saefs-{dataset}/versions/{version - 1}")
                assert "@ champion" not in wait_for_text(browser, "Aliases")
            browser.get(f"{url}/#/models/saefs-{dataset}")
            assert "now" in wait_for_text(browser, "champion history (saefs, newest first)")


def test_mlflow_serves_the_champion_on_the_online_stores_rows(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from features.serving.online import online_frame
    from features.serving.scoring import load_champion
    from features.stores import tracking
    from pipelines.params import load_params
    from pipelines.stores import feature_store

    monkeypatch.chdir(site)
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    mlflow.set_registry_uri("sqlite:///mlflow.db")
    try:
        store = feature_store(load_params().feast_apply)
        name = tracking.registered_name("alpha")
        champion = load_champion(store, name, tracking.get_alias_version(name, tracking.CHAMPION))
        ids = pd.read_parquet(paths.prepared("alpha"))["text_id"].head(8).tolist()
        rows = online_frame(store, champion.service_object, champion.kind, ids)  # what the scoring service reads
        expected = champion.probe.predict_proba(rows)  # the logged pyfunc answers probabilities
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion", "--env-manager",
               "local", "-h", "127.0.0.1", "-p", "{port}"]
    # it runs the venv's uvicorn by name, as from an activated environment
    env = {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with server(command, site, "/ping", "mlflow models serve", env=env) as url:
        request = urllib.request.Request(f"{url}/invocations", headers={"Content-Type": "application/json"},
                                         data=f'{{"dataframe_split": {rows.to_json(orient="split")}}}'.encode())
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            assert np.allclose(json.loads(response.read())["predictions"], expected, atol=1e-6)


def test_the_feast_ui_lists_the_feature_views(site: Path, browser: webdriver.Chrome) -> None:
    from feast import FeatureStore

    views = sorted(view.name for view in FeatureStore(repo_path=str(site / "feature_repo")).list_feature_views())
    feast = str(Path(sys.executable).with_name("feast"))
    command = [feast, "-c", "feature_repo", "ui", "--host", "127.0.0.1", "--port", "{port}"]
    with server(command, site, "/", "the Feast UI") as url:
        browser.get(f"{url}/p/saefs/feature-view")
        text = wait_for_text(browser, views[0])
        assert f"Feature Views ({len(views)})" in text and all(view in text for view in views)


def test_the_scoring_page_shades_a_text_and_shows_the_cards(site: Path, browser: webdriver.Chrome) -> None:
    command = [sys.executable, "-m", "pipelines.serve", "serve", "--port", "{port}"]
    with server(command, site, "/ready", "the scoring service") as url:
        browser.get(url + "/")
        wait_for(browser, "#dataset option")
        browser.find_element(By.ID, "text").send_keys("w1 w2 w3 w4 w5 w6")
        browser.find_element(By.ID, "score").click()
        cards = wait_for(browser, ".card")
        assert "saefs-alpha v" in browser.find_element(By.ID, "verdict").text
        titles = [card.find_element(By.TAG_NAME, "h3").text for card in cards]
        assert all(title.startswith("#") and "(no card)" not in title for title in titles)  # labelled by their cards
        tokens = wait_for(browser, "#tokens span")
        assert "".join(t.text for t in tokens).split() == "w1 w2 w3 w4 w5 w6".split()
        shaded = [t for t in tokens if "fires" in (t.get_attribute("class") or "")]
        assert shaded and all("224, 112, 0" in t.value_of_css_property("background-color") for t in shaded)
        assert browser.find_element(By.ID, "error").text == ""
        cards[-1].click()  # another latent: the shading follows it
        assert browser.find_element(By.ID, "shaded-by").text == cards[-1].get_attribute("data-latent")

        browser.get(url + "/docs")
        operations = wait_for(browser, ".swagger-ui .opblock", count=4)
        assert any("/explain" in op.text for op in operations)
