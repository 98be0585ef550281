"""End to end in a real browser: Playwright drives Debian's Chromium (headless) through the studio on the
bundled model: upload an example, predict, compare two prompt sets, explain a prompt that is not the top
one, and screenshot each view at desktop width and at 390 px (a phone).

Screenshots go to ``$STUDIO_SCREENSHOTS`` when set (the README's are made so), else to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


def open_tab(page, name: str) -> None:
    """Click a tab; on a narrow screen Gradio moves some tabs into its "More tabs" menu."""
    tab = page.get_by_role("tab", name=name)
    if tab.count():
        tab.click()
    else:
        page.get_by_label("More tabs").click()
        page.locator(".overflow-dropdown button", has_text=name).click()
    page.wait_for_timeout(300)


def test_studio_in_a_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    import bayesvlm_explain as bx
    from bayesvlm_explain.ui import build_app, bundled_examples

    out = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    examples = bundled_examples()
    frog = next(path for path, _ in examples if "frog" in path)
    app = build_app(vlm, examples=examples)
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app.local_url)
            page.locator("#image-file input[type=file]").set_input_files(frog)
            page.locator("#prompts textarea").fill("an emoji of frog\nan emoji of grapes\nan emoji of anchor")

            page.locator("#predict-btn").click()
            expect(page.locator("#verdict")).to_contain_text("in-domain images", timeout=60_000)
            expect(page.locator("#bars")).to_contain_text("an emoji of frog")
            expect(page.locator("#bars")).to_contain_text("logit")
            shots = {"inspect": page.screenshot(full_page=True)}

            open_tab(page, "Compare prompts")
            page.locator("#set-labels textarea").fill("frog\ngrapes\nanchor")
            page.locator("#compare-btn").click()
            expect(page.locator("#compare-summary")).to_contain_text("most certain", timeout=60_000)
            expect(page.locator(".bx-card")).to_have_count(2)
            shots["compare"] = page.screenshot(full_page=True)

            open_tab(page, "Explain")
            pick = page.locator("#explain-prompt input")
            pick.fill("an emoji of grapes")
            pick.press("Enter")
            page.locator("#explain-btn").click()
            expect(page.locator("#explain-summary")).to_contain_text("an emoji of grapes", timeout=120_000)
            expect(page.locator("#tokens")).to_contain_text("grap")  # WordPiece: grap ##es
            expect(page.locator("#heatmap img")).to_be_visible()
            shots["explain"] = page.screenshot(full_page=True)

            # the same page on a phone: every view stays readable at 390 px
            page.set_viewport_size({"width": 390, "height": 844})
            for tab, name in (("Inspect", "inspect"), ("Compare prompts", "compare"), ("Explain", "explain")):
                open_tab(page, tab)
                shots[f"{name}-390"] = page.screenshot(full_page=True)
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 400, f"{name} overflows a 390 px screen ({width} px)"
            browser.close()
        for name, png in shots.items():
            (out / f"studio-{name}.png").write_bytes(png)
            assert len(png) > 10_000
    finally:
        app.close()
