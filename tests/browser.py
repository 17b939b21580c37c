"""Headless Chromium helpers for the UI tests, and ``python -m tests.browser`` for screenshots.

The distribution's chromium and chromedriver are used (nothing is downloaded): selenium's own
driver manager would try to fetch a browser, which this machine's closed network refuses.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bnpipe.procs import stop_process

T = TypeVar("T")

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts, which a
# closed network refuses many times a second; a fresh profile keeps runs independent.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when chromium and chromedriver exist."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make setup installs the dev group)"
    if not any(shutil.which(n) for n in CHROMIUM_NAMES):
        return "chromium not found (Debian: apt-get install -y chromium chromium-driver)"
    if not shutil.which("chromedriver"):
        return "chromedriver not found (Debian: apt-get install -y chromium-driver)"
    return None


def browser_test_marks() -> list[Any]:
    """A browser test module's ``pytestmark``: browser, server, and skipped with one line where
    Chromium or its driver is missing."""
    import pytest

    why = browser_missing()
    return [
        pytest.mark.browser,
        pytest.mark.server,
        pytest.mark.skipif(why is not None, reason=f"browser tests: {why}"),
    ]


@contextmanager
def chromium(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium WebDriver with a throwaway profile; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next(p for n in CHROMIUM_NAMES if (p := shutil.which(n)))
    with tempfile.TemporaryDirectory(prefix="bnpipe-chromium-") as profile:
        opts = webdriver.ChromeOptions()
        opts.binary_location = binary
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
        driver.set_window_size(width, height)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(what: Callable[[], T], timeout_s: float = 30.0, message: str = "") -> T:
    """Poll ``what`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = what()
        except Exception as exc:  # the page is still rendering; try again
            last = exc
        else:
            if value:
                return value
        time.sleep(0.25)
    raise TimeoutError(f"{message or 'condition'} not met in {timeout_s:.0f} s (last: {last!r})")


def wait_text(driver: Any, text: str, timeout_s: float = 30.0) -> None:
    """Wait until ``text`` appears in the page's visible text."""
    wait_for(
        lambda: text in driver.find_element("tag name", "body").text,
        timeout_s,
        f"text {text!r} on {driver.current_url}",
    )


def screenshot(driver: Any, path: Path, *, full_page: bool = True) -> Path:
    """Save a PNG of the page (the whole scroll height when ``full_page``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    if full_page:
        height = driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
        )
        driver.set_window_size(size["width"], min(max(int(height), size["height"]), 4000))
        time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(size["width"], size["height"])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(store_dir: Path, log: Path | None = None) -> Iterator[str]:
    """``mlflow ui`` on a free 127.0.0.1 port over ``store_dir`` (a bnpipe store); its URL.

    Its start takes seconds on an idle machine and minutes on a loaded 2-core one.
    """
    port = free_port()
    db = (store_dir / "mlflow.db").resolve()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/health") or proc.poll() is not None, 300, "mlflow ui")
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode} (log: {log})")
        yield url
    finally:
        stop_process(proc, timeout_s=20)
        if log:
            out.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Screenshots of the MLflow UI over a store (the runs table, a parent, its report, a model)."""
    parser = argparse.ArgumentParser(prog="python -m tests.browser", description=main.__doc__)
    parser.add_argument("--store", type=Path, default=Path("mlruns"), help="bnpipe store folder")
    parser.add_argument("--experiment", default="bnpipe-bn-ablation")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument(
        "--url",
        help="only this page: a link bnpipe printed (its http://127.0.0.1:5000 is replaced by the "
        "served UI's address), shot as it first paints",
    )
    parser.add_argument("--name", default="page.png", help="the --url shot's file name")
    parser.add_argument(
        "--notebook",
        type=Path,
        help="only this executed notebook (tests/test_notebook.py writes quickstart.executed.ipynb"
        " into its tmp folder): converted to HTML by nbconvert and shot as --name",
    )
    args = parser.parse_args(argv)
    if args.notebook:
        if why := browser_missing():
            print(f"cannot take screenshots: {why}", file=sys.stderr)
            return 2
        with chromium(width=1100) as driver:
            print(shoot_notebook(driver, args.notebook, args.out / args.name))
        return 0
    if not (args.store / "mlflow.db").is_file():
        print(f"--store: no mlflow.db in {args.store}", file=sys.stderr)
        return 2
    if why := browser_missing():
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 2
    with mlflow_ui(args.store) as url, chromium() as driver:
        if args.url:
            print(shoot_link(driver, url, args.url, args.out / args.name))
            return 0
        for path in shoot_all(driver, url, args.store, args.experiment, args.out):
            print(path)
    return 0


def shoot_notebook(driver: Any, notebook: Path, path: Path) -> Path:
    """An executed notebook as nbconvert's HTML renders it (outputs, no prompts' clutter)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "notebook.html"
        page.write_text(body, encoding="utf-8")
        driver.get(page.as_uri())
        wait_text(driver, "Decided (")
        time.sleep(1.0)  # the report's frame paints its figures
        screenshot(driver, path)
        # Its end too (a page taller than a shot's 4,000 px is cut): the last cells' outputs.
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        time.sleep(0.5)
        driver.save_screenshot(str(path.with_name(f"{path.stem}-end{path.suffix}")))
        return path


def shoot_link(driver: Any, url: str, link: str, path: Path) -> Path:
    """A screenshot of ``link`` (on ``make ui``'s address) as served at ``url``, once the runs
    table has rendered its rows."""
    from bnpipe.tracking import LOCAL_UI

    open_page(driver, url + link.removeprefix(LOCAL_UI), "Run Name", 240)
    wait_for(lambda: driver.find_elements("css selector", ".ag-row"), 60, "runs table rows")
    time.sleep(2)  # the metric cells fill in after the rows
    return screenshot(driver, path, full_page=False)


# -- MLflow UI pages -----------------------------------------------------------------------------
def close_assistant(driver: Any) -> None:
    """Close MLflow's Assistant side panel, which 3.17 opens on every page and covers the runs."""
    for button in driver.find_elements("css selector", "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def mlflow_group_by(driver: Any, names: list[str]) -> None:
    """Group the runs table by ``names`` (params or tags) with the UI's own Group by control."""
    menu_items = "[role=menu] [role=menuitemcheckbox]"
    for name in names:
        if not driver.find_elements("css selector", "[role=menu]"):
            driver.find_element("xpath", "//button[contains(., 'Group by')]").click()
        item = wait_for(
            lambda n=name: next(
                i for i in driver.find_elements("css selector", menu_items) if i.text.strip() == n
            ),
            20,
            f"group-by entry {name!r}",
        )
        item.click()
        time.sleep(1)  # the menu re-renders (or closes) after each pick
    driver.find_element("tag name", "body").send_keys("\ue00c")  # Escape closes the menu


def group_rows(driver: Any) -> list[str]:
    """The group header rows of a grouped runs table ("Group: bn: on, batch_size: 32")."""
    body = driver.find_element("tag name", "body").text
    return [ln for ln in body.splitlines() if ln.startswith("Group: ")]


def report_images(driver: Any) -> list[int]:
    """naturalWidth of every <img> of an HTML artifact (rendered in an iframe; 0: not loaded)."""
    frame = wait_for(lambda: driver.find_element("tag name", "iframe"), 60, "artifact iframe")
    driver.switch_to.frame(frame)
    try:
        imgs = wait_for(lambda: driver.find_elements("tag name", "img"), 30, "images in report")
        wait_for(
            lambda: all(driver.execute_script("return arguments[0].complete", i) for i in imgs),
            30,
            "images loaded",
        )
        return [int(driver.execute_script("return arguments[0].naturalWidth", i)) for i in imgs]
    finally:
        driver.switch_to.default_content()


def open_page(driver: Any, url: str, text: str, timeout_s: float = 120) -> None:
    """Load ``url``, wait for ``text``, and close the Assistant panel."""
    driver.get(url)
    wait_text(driver, text, timeout_s)
    close_assistant(driver)
    time.sleep(1)  # let the last requests (charts, columns) render before anything is read


def shoot_all(driver: Any, url: str, store: Path, experiment: str, out: Path) -> list[Path]:
    """Screenshots of the MLflow UI pages a user meets, for the latest parent run; PNG paths."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(store / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"--experiment: no experiment {experiment!r} in {store}")
    parents = client.search_runs(
        [exp.experiment_id],
        "tags.`bnpipe.role` = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise SystemExit(f"--store: no bnpipe parent run in experiment {experiment!r}")
    parent = parents[0]
    models = client.search_logged_models([exp.experiment_id], max_results=1)
    base = f"{url}/#/experiments/{exp.experiment_id}"
    mode = "?workflowType=machine_learning"
    shots = []
    open_page(driver, f"{base}/runs{mode}", parent.info.run_name)
    mlflow_group_by(driver, ["bn", "batch_size"])
    wait_for(lambda: group_rows(driver), 30, "grouped runs")
    shots.append(screenshot(driver, out / "mlflow-runs-grouped.png", full_page=False))
    arms = f"tags.`bnpipe.role` = 'arm' AND tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    if client.search_runs([exp.experiment_id], arms, max_results=1):
        from bnpipe.tracking import arms_view_key

        link = f"{base}/runs{mode}&viewStateShareKey={arms_view_key(parent.info.run_id)}"
        shots.append(shoot_link(driver, "", link, out / "mlflow-runs-arms.png"))
    open_page(driver, f"{base}/runs/{parent.info.run_id}{mode}", "Description")
    shots.append(screenshot(driver, out / "mlflow-parent-run.png"))
    run_page = f"{base}/runs/{parent.info.run_id}/artifacts/report/report.html{mode}"
    open_page(driver, run_page, "report.html")
    report_images(driver)
    # Show a figure, not only the title: scroll the report's frame to its first image.
    driver.switch_to.frame(driver.find_element("tag name", "iframe"))
    driver.execute_script("document.querySelector('img').scrollIntoView()")
    driver.switch_to.default_content()
    shots.append(screenshot(driver, out / "mlflow-report-html.png", full_page=False))
    if models:
        open_page(driver, f"{base}/models/{models[0].model_id}{mode}", models[0].name)
        shots.append(screenshot(driver, out / "mlflow-model.png"))
    return shots


if __name__ == "__main__":
    raise SystemExit(main())
