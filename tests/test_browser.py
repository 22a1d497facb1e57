"""The lessons in JupyterLab, in a real browser: every cell runs, figures and widgets appear.

JupyterLab is started with `lab_command`, the command `make lab` runs, on a copy of the
lessons in the smoke profile. Headless Chromium runs each lesson through the "Run All Cells"
menu item, as a learner would, and the saved copy shows what ran.
"""

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gptclassifier.evaluation.inference import classify_with_run
from gptclassifier.lessons.lab import lab_command

pytestmark = pytest.mark.browser

BROWSER_VARIABLE = "GPTCLASSIFIER_BROWSER"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(path.name for path in NOTEBOOKS.glob("[0-9]*.ipynb"))
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class")
# JupyterLab leaves cells outside the window out of the page unless told otherwise; the
# copy of the lessons is never autosaved behind the test's back; no news pop-up.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
}
LESSON_TIMEOUT_S = 600  # a hang, not a slow machine: lesson 10 once passed 300 s in a full CI run


@pytest.fixture(scope="module")
def chromium() -> str:
    """Return the Chromium executable named by $GPTCLASSIFIER_BROWSER, or skip without one."""
    path = os.environ.get(BROWSER_VARIABLE)
    if not path:
        pytest.skip(
            f"browser test off: apt-get install chromium, then "
            f"{BROWSER_VARIABLE}=$(command -v chromium) make test"
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"${BROWSER_VARIABLE} is {path!r}, which is not an executable")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    """Serve a copy of the lessons with JupyterLab in the smoke profile; yield (url, folder)."""
    root = tmp_path_factory.mktemp("lab")
    lessons = root / "notebooks"
    lessons.mkdir()
    for name in LESSONS:  # without outputs, so that all the test sees is what ran here
        notebook = json.loads((NOTEBOOKS / name).read_text())
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        (lessons / name).write_text(json.dumps(notebook))
    settings = root / "settings"
    for plugin, values in LAB_SETTINGS.items():
        package, name = plugin.rsplit("/", 1)
        (settings / package).mkdir(parents=True, exist_ok=True)
        (settings / package / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = _free_port(), "browser-test-token"
    env = {
        **os.environ,
        "GPTCLASSIFIER_PROFILE": "smoke",
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
    }
    options = ("--no-browser", f"--ServerApp.port={port}", "--ServerApp.port_retries=0")
    command = lab_command(lessons, *options, f"--IdentityProvider.token={token}")
    log = (root / "lab.log").open("w")
    server = subprocess.Popen(command, cwd=lessons, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{url}/api/status?token={token}", server, root / "lab.log")
        yield f"{url}/lab/tree/{{}}?reset&token={token}", lessons  # reset: no earlier tabs
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    """Yield headless Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def lesson_page(browser):
    """Yield a fresh page and the console messages it logs."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    yield page, console
    context.close()


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_runs_in_jupyterlab(lab, lesson_page, name):
    url, lessons = lab
    page, console = lesson_page
    expected_images = _image_outputs(json.loads((NOTEBOOKS / name).read_text()))
    _open(page, url.format(name))
    plot_sources = _run_all_cells(page)

    notebook = _save(page, lessons / name)
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    errors = [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']}"
    assert all(cell["execution_count"] for cell in cells), "a cell did not run"
    assert _image_outputs(notebook) == expected_images
    shown = page.eval_on_selector_all(
        ".jp-RenderedImage img", "images => images.map(image => image.naturalWidth)"
    )
    assert len(shown) == expected_images and all(width > 0 for width in shown)
    _assert_no_widget_errors(page, console)
    _screenshot(page, name.removesuffix(".ipynb"), full_page=True)

    if name.startswith("07_"):
        assert len(plot_sources) >= 3, "the live view did not redraw its curves during training"
    if name.startswith("08_"):
        _type_into_classifier(page, lessons / "runs" / "lessons-smoke")
        _assert_no_widget_errors(page, console)
    _menu(page, "Kernel", "Shut Down Kernel")


def _type_into_classifier(page, run_dir: Path) -> None:
    """Type a spam-like and a ham-like message; the widget must show the run's answers."""
    widget = page.locator(".widget-vbox", has=page.locator(".widget-textarea")).last
    messages = {
        "spam": "WINNER!! You have won a £1000 cash prize. Text CLAIM to 81010 now, T&Cs apply.",
        "ham": "Sorry I'm running late, see you at the station at six. Love, mum",
    }
    for kind, text in messages.items():
        widget.locator("textarea").fill(text)
        expected = classify_with_run(run_dir, [text])[0]
        shown = f"{expected.label} with probability {expected.probability:.1%}"
        widget.locator(".widget-html", has_text=shown).wait_for(timeout=30_000)
        _screenshot(widget, f"08_widget_{kind}")


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_server(status_url: str, server: subprocess.Popen, log: Path) -> None:
    """Wait until JupyterLab answers, or fail with the end of its log."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(status_url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within 120 s:\n{log.read_text()[-2000:]}")


def _open(page, url: str) -> None:
    """Open a lesson and wait until its kernel is ready."""
    page.goto(url)
    page.locator(".jp-Notebook").wait_for(timeout=60_000)
    page.locator("#jp-main-statusbar", has_text="| Idle").wait_for(timeout=60_000)


def _run_all_cells(page) -> set[str]:
    """Run every cell from JupyterLab's Run menu; return the live plots' sources seen meanwhile."""
    _menu(page, "Run", "Run All Cells")
    page.locator(".jp-InputPrompt", has_text="*").first.wait_for(timeout=30_000)
    plot_sources: set[str] = set()
    deadline = time.monotonic() + LESSON_TIMEOUT_S
    while time.monotonic() < deadline:
        plot_sources.update(
            page.eval_on_selector_all("img.widget-image", "images => images.map(i => i.src)")
        )
        if page.locator(".jp-InputPrompt", has_text="*").count() == 0:
            return plot_sources - {""}
        time.sleep(0.2)
    pytest.fail(f"the lesson did not finish within {LESSON_TIMEOUT_S} s")


def _save(page, path: Path) -> dict:
    """Save the notebook from JupyterLab and return what it wrote."""
    before = path.stat().st_mtime_ns
    _menu(page, "File", "Save Notebook")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before:
        if time.monotonic() > deadline:
            pytest.fail(f"JupyterLab did not save {path.name}")
        time.sleep(0.2)
    time.sleep(0.5)  # let the write finish before reading it
    return json.loads(path.read_text())


def _menu(page, menu: str, item: str) -> None:
    """Choose an item from one of JupyterLab's menus, as a learner would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$")).click()


def _image_outputs(notebook: dict) -> int:
    """Count the figures a notebook's outputs hold."""
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
    )


def _assert_no_widget_errors(page, console: list[str]) -> None:
    """Fail when a widget failed to load, in the page or in the browser console."""
    for error in WIDGET_ERRORS:
        assert not [line for line in console if error in line], f"console: {error}"
        assert page.get_by_text(error).count() == 0, f"page: {error}"


def _screenshot(target, name: str, **options) -> None:
    """Keep a screenshot of a page or an element for inspection after the run."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target.screenshot(path=str(SCREENSHOTS / f"{name}.png"), **options)
