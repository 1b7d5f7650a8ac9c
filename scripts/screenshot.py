"""Open notebooks/00-explore.ipynb in JupyterLab in headless Chromium, move a control, save a PNG.

``make screenshot`` runs it (not part of ``make test``: it needs Debian's ``chromium`` and the ``screenshot``
extra, Playwright). JupyterLab is served on 127.0.0.1 only, with a random token and fresh settings,
workspace and runtime folders; Chromium starts headless with a fresh profile and no background
networking. The script runs every cell, waits for the three panels, changes the MSE panel's prior and
bits (the figure must redraw), and saves the page to ``--out`` (default ``figures/explore.png``). It serves a
copy of the notebook from a temporary folder, so the committed one (without outputs) is never touched.

    python scripts/screenshot.py [--out figures/explore.png] [--chromium /usr/bin/chromium] [--timeout 600]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/00-explore.ipynb"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(tmp: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1 with settings, workspaces and runtime files under ``tmp``."""
    config = tmp / "config"
    (config / "labconfig").mkdir(parents=True)
    # no news pop-up, no update check: nothing asks for the network
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp / "data"), "IPYTHONDIR": str(tmp / "ipython"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    # the kernels must find the installed aciq and jupyterlab_widgets: keep the interpreter's own data path
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                        os.environ.get("JUPYTER_PATH")]))
    # serve a copy: JupyterLab autosaves (outputs and all) and leaves checkpoints beside what it opens
    served = tmp / "served"
    (served / Path(NOTEBOOK).parent).mkdir(parents=True)
    shutil.copyfile(ROOT / NOTEBOOK, served / NOTEBOOK)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}", "--ServerApp.open_browser=False",
           f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # e.g. a container: Jupyter refuses root without this
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "lab.log", "w"))


def _wait_for_lab(port: int, token: str, lab: subprocess.Popen, timeout: float) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {lab.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


def _panel_images(page):
    return page.locator(".jp-OutputArea-output img")


def _shoot(url: str, out: Path, chromium: str, profile: Path, timeout_ms: int) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=chromium, headless=True,
                                                        args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 1000})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(timeout_ms)
        try:
            page.goto(url)
            page.locator(".jp-Notebook").wait_for()
            select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
            try:  # a fresh JupyterLab may ask which kernel to start: the notebook's own
                select.wait_for(timeout=15_000)
                select.click()
            except PlaywrightTimeout:
                pass
            page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            images = _panel_images(page)
            expect(images).to_have_count(3, timeout=timeout_ms)          # the three panels are drawn
            first = images.nth(0)
            before = first.get_attribute("src")
            # move two controls of the MSE panel: the prior (a dropdown) and the bits (a slider, by keyboard)
            page.locator(".widget-dropdown select").first.select_option("gauss")
            expect(first).not_to_have_attribute("src", before, timeout=timeout_ms)
            before = _panel_images(page).nth(0).get_attribute("src")
            handle = page.locator(".widget-slider .noUi-handle").first
            handle.focus()
            for _ in range(4):
                handle.press("ArrowLeft")                                 # 4 bits -> 3 bits in steps of 0.25
            expect(_panel_images(page).nth(0)).not_to_have_attribute("src", before, timeout=timeout_ms)
            page.locator(".jp-Cell").filter(has=page.locator(".widget-dropdown")).first.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        except Exception:
            failed = out.with_name(out.stem + "-failed.png")
            page.screenshot(path=str(failed))
            sys.stderr.write(f"the page at the failure: {failed}\n")
            raise
        finally:
            context.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "figures" / "explore.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for each wait")
    args = parser.parse_args(argv)
    if not Path(args.chromium).is_file():
        parser.exit(2, f"screenshot: error: no Chromium at {args.chromium} (apt-get install chromium)\n")
    port, token = _free_port(), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="aciq-screenshot-") as tmp:
        tmp = Path(tmp)
        lab = _start_lab(tmp, port, token)
        try:
            _wait_for_lab(port, token, lab, args.timeout)
            url = f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}?token={token}"
            _shoot(url, Path(args.out), args.chromium, tmp / "chromium-profile", int(args.timeout * 1000))
        except Exception:
            sys.stderr.write((tmp / "lab.log").read_text()[-4000:])
            raise
        finally:
            lab.terminate()
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
