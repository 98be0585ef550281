"""End to end in a real browser: Playwright drives Debian's Chromium (headless) through every tab of the
studio on the bundled model: upload an example, predict, compare two prompt sets, explain a prompt that is
not the top one, run a batch of examples, calibrate on a zip with one folder per class, rank a pool zip for
labelling, and screenshot each view at desktop width and at 390 px (a phone).

Screenshots go to ``$STUDIO_SCREENSHOTS`` when set (the README's are made so), else to a temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
TABS = {"Inspect": "inspect", "Compare prompts": "compare", "Explain": "explain", "Batch": "batch",
        "Calibrate": "calibrate", "Select": "select"}


def open_tab(page, name: str) -> None:
    """Click a tab: every tab is shown (the tab row wraps on a phone; no overflow menu)."""
    from playwright.sync_api import expect

    tab = page.get_by_role("tab", name=name)
    expect(tab).to_be_visible()
    tab.click()
    page.wait_for_timeout(300)


def top_of(page, selector: str) -> float:
    """The page y (px) of the element's top edge."""
    return page.locator(selector).first.evaluate("e => e.getBoundingClientRect().top + window.scrollY")


def example_zip(path: Path, examples: dict[str, str], folders: bool) -> list[str]:
    """Zip the example images (``{file: label}``), each also mirrored (so a class has two images); with
    ``folders`` in one folder per class (``grinning_face/``). Returns the member names."""
    from PIL import Image, ImageOps

    names = []
    with zipfile.ZipFile(path, "w") as zf:
        for file, label in examples.items():
            stem = Path(file).stem
            mirrored = path.parent / f"{stem}-mirrored.png"
            ImageOps.mirror(Image.open(file).convert("RGB")).save(mirrored)
            for source in (Path(file), mirrored):
                name = f"{label.replace(' ', '_')}/{source.name}" if folders else source.name
                zf.write(source, name)
                names.append(name)
    return names


def grid_column(page, label: str, col: int) -> list[str]:
    """The texts of column ``col`` of the Gradio Dataframe labelled ``label``, in row order."""
    cells = page.get_by_role("grid", name=label).locator(f"[role=gridcell][data-col='{col}']")
    return [cells.nth(i).inner_text().strip() for i in range(cells.count())]


LABELS_UNDER_BUTTONS = """() => {
  const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const out = [];
  for (const label of document.querySelectorAll('label[data-testid="block-label"]')) {
    const r = label.getBoundingClientRect();
    const block = label.closest('.block');
    if (!r.width || !r.height || !block) continue;
    for (const b of block.querySelectorAll('button[aria-label], button[title]')) {
      const q = b.getBoundingClientRect();
      if (q.width && q.height && q.width < 80 && hit(r, q)) out.push(label.textContent.trim());
    }
  }
  return out;
}"""
"""JavaScript: the text of every component label that a small button of its own block (clear, download,
full screen) covers."""


def test_studio_in_a_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    import bayesvlm_explain as bx
    from bayesvlm_explain.data.labels import PROMPT_TEMPLATE, load_label_space
    from bayesvlm_explain.ui import build_app, bundled_examples

    out = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    vlm = bx.BayesVLM.from_pretrained("bundled", device="cpu")
    examples = bundled_examples()
    frog = next(path for path, _ in examples if "frog" in path)
    # each example's own label is the first of its prompts; the labels are classes of the bundled model
    prefix = PROMPT_TEMPLATE.split("{label}")[0]
    labelled = {path: prompts.splitlines()[0].removeprefix(prefix) for path, prompts in examples}
    assert len(labelled) >= 4 and set(labelled.values()) <= set(load_label_space().labels)
    prompts = [PROMPT_TEMPLATE.format(label=label) for label in ("frog", "grapes", "anchor")]
    # a batch of the three prompts' own images and one (the airplane) that none of them names
    batch = [path for path, label in labelled.items() if label in ("frog", "grapes", "anchor", "airplane")]
    assert len(batch) == 4
    app = build_app(vlm, examples=examples)  # the photograph examples come from vlm.assets
    app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    shots: dict[str, bytes] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(app.local_url)
            # the page says what the model knows, and the posterior scale its benchmark chose
            expect(page.locator("#model-card")).to_contain_text("photographs are outside what it knows")
            expect(page.locator("#scale input")).to_have_value("0.01 (recommended)")
            # a refused upload leaves a warning and an empty file box (not a file with "Error" badges)
            fake = tmp_path / "not-an-image.png"
            fake.write_text("hello")
            page.locator("#image-file input[type=file]").set_input_files(fake)
            expect(page.get_by_test_id("toast-body").first).to_contain_text("not a JPEG", timeout=30_000)
            expect(page.locator("#image-file")).not_to_contain_text("not-an-image")
            page.get_by_test_id("toast-body").first.wait_for(state="detached", timeout=15_000)
            # all of the model's labels fill the prompts, and Inspect takes them
            page.locator("#use-labels").click()
            expect(page.locator("#prompts textarea")).to_have_value(
                "\n".join(PROMPT_TEMPLATE.format(label=x) for x in load_label_space().labels))
            page.locator("#image-file input[type=file]").set_input_files(frog)
            page.locator("#predict-btn").click()
            expect(page.locator("#bars")).to_contain_text("an emoji of frog", timeout=60_000)
            # a photograph example is one click away, and the verdict says it is outside the domain
            page.locator("#outside-examples").get_by_text("photo_rocket.jpg").click()
            expect(page.locator("#prompts textarea")).to_have_value(re.compile("an emoji of airplane"))
            page.locator("#predict-btn").click()
            expect(page.locator("#verdict")).to_contain_text("Outside what this model knows", timeout=60_000)
            shots["inspect-photo"] = page.screenshot(full_page=True)
            # another posterior scale: wider logits, and the yardstick (built for n = 0.01) is switched off
            page.locator("#scale input").click()
            page.get_by_role("option", name="1", exact=True).click()
            page.locator("#predict-btn").click()
            expect(page.locator("#verdict")).to_contain_text("No yardstick", timeout=60_000)
            page.locator("#scale input").click()
            page.get_by_role("option", name="0.01 (recommended)").click()
            page.locator("#examples").get_by_text(Path(frog).name).click()  # the file box holds a file now
            expect(page.locator("#image-file")).to_contain_text(Path(frog).stem[:8])  # uploaded (name shortened)
            page.locator("#prompts textarea").fill("\n".join(prompts))

            page.locator("#predict-btn").click()
            expect(page.locator("#verdict")).to_contain_text("in-domain images", timeout=60_000)
            expect(page.locator("#bars")).to_contain_text("an emoji of frog")
            expect(page.locator("#bars")).to_contain_text("logit")
            # the primary action and the answer are above the fold of a 1280 x 900 screen
            assert top_of(page, "#predict-btn") < 400 and top_of(page, "#verdict") < 500
            shots["inspect"] = page.screenshot(full_page=True)

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

            open_tab(page, "Batch")
            panel = page.get_by_role("tabpanel")
            panel.locator("input[type=file][multiple]").set_input_files(batch)
            expect(panel.locator("td.filename")).to_have_count(len(batch))  # uploaded
            page.locator("#batch-btn").click()
            table = page.get_by_role("grid", name="one row per image")
            expect(table).to_have_attribute("aria-rowcount", str(len(batch) + 1), timeout=60_000)
            names, top_prompts = grid_column(page, "one row per image", 0), grid_column(page, "one row per image", 1)
            tops = dict(zip(names, top_prompts, strict=True))
            assert sorted(tops) == sorted(Path(p).name for p in batch)
            assert set(tops.values()) <= set(prompts)
            for path in batch:  # an image the prompts name is recognised
                if labelled[path] != "airplane":
                    assert tops[Path(path).name] == PROMPT_TEMPLATE.format(label=labelled[path]), tops
            for ext in ("csv", "json"):
                link = panel.locator(f"a[download^='batch-'][download$='.{ext}']")
                expect(link).to_be_visible()
                body = page.request.get(link.get_attribute("href")).text()
                assert all(Path(p).name in body for p in batch), f"the {ext} download misses images"
            shots["batch"] = page.screenshot(full_page=True)

            open_tab(page, "Calibrate")
            labelled_zip = tmp_path / "emoji-classes.zip"
            example_zip(labelled_zip, labelled, folders=True)
            page.locator("#calibrate-zip input[type=file]").set_input_files(labelled_zip)
            expect(page.locator("#calibrate-zip")).to_contain_text("emoji-classes")
            page.locator("#calibrate-btn").click()
            summary = page.locator("#calibrate-summary")
            expect(summary).to_contain_text(f"{2 * len(labelled)} images, {len(labelled)} classes",
                                            timeout=120_000)
            metrics, auroc = summary.locator("table").nth(0), summary.locator("table").nth(1)
            expect(metrics).to_contain_text("ECE")
            rows = metrics.locator("tbody tr")
            expect(rows).to_have_count(2)
            for row, method in zip(rows.all(), ("deterministic", "bayes"), strict=True):
                cells = row.locator("td").all_inner_texts()
                assert cells[0] == method and all(0 <= float(v) <= 1 for v in (cells[1], cells[2])), cells
            expect(auroc).to_contain_text("AUROC")
            expect(auroc.locator("tbody tr", has_text="neg_bald")).to_have_count(1)
            plot = page.locator("#reliability img")
            expect(plot).to_be_visible()
            assert plot.evaluate("img => img.naturalWidth") > 200
            shots["calibrate"] = page.screenshot(full_page=True)

            open_tab(page, "Select")
            pool_zip = tmp_path / "emoji-pool.zip"
            pool = example_zip(pool_zip, labelled, folders=False)
            page.locator("#select-pool input[type=file]").set_input_files(pool_zip)
            expect(page.locator("#select-pool")).to_contain_text("emoji-pool")
            page.locator("#select-btn").click()
            expect(page.locator("#select-summary")).to_contain_text(
                f"{len(pool)} pool images ranked over {len(prompts)} class prompts", timeout=120_000)
            expect(page.locator("#select-summary")).to_contain_text(f"{len(pool)} images of the pool")
            picks = "top picks per acquisition function"
            expect(page.get_by_role("grid", name=picks)).to_have_attribute("aria-rowcount", str(len(pool) + 1))
            assert grid_column(page, picks, 0) == [str(r + 1) for r in range(len(pool))]
            for col in (1, 3, 5):  # entropy, BALD and EPIG each rank every pool image once
                assert sorted(grid_column(page, picks, col)) == sorted(pool)
            expect(page.locator("#select-summary")).to_contain_text("no learner ran")
            # the labelled zip of Calibrate: a folder no prompt names is refused, by name
            page.locator("#select-labelled input[type=file]").set_input_files(labelled_zip)
            expect(page.locator("#select-labelled")).to_contain_text("emoji-classes")
            page.locator("#select-btn").click()
            toast = page.get_by_test_id("toast-body").first
            expect(toast).to_contain_text("matches no prompt", timeout=120_000)
            toast.wait_for(state="detached", timeout=15_000)
            # with a prompt for every folder the learner runs first, and the pool is ranked under its model
            page.locator("#prompts textarea").fill(
                "\n".join(PROMPT_TEMPLATE.format(label=x) for x in dict.fromkeys(labelled.values())))
            page.locator("#select-btn").click()
            expect(page.locator("#select-summary")).to_contain_text("Ranked under the adapted model",
                                                                    timeout=120_000)
            expect(page.locator("#select-summary")).to_contain_text(
                f"Learner on {2 * len(labelled)} labelled images of {len(labelled)} classes")
            shots["select"] = page.screenshot(full_page=True)
            expect(page.get_by_test_id("toast-body")).to_have_count(0)  # no error on the way

            # the same page on a phone: every view stays readable at 390 px
            page.set_viewport_size({"width": 390, "height": 844})
            name = page.locator("#image-file td.filename").bounding_box()  # the uploaded file's name stays legible
            assert name is not None and name["width"] >= 60, name
            for tab in TABS:  # the tab row wraps: every tab is shown within the screen's width, no overflow menu
                box = page.get_by_role("tab", name=tab).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (tab, box)
            for tab, name in TABS.items():
                open_tab(page, tab)
                shots[f"{name}-390"] = page.screenshot(full_page=True)
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 400, f"{name} overflows a 390 px screen ({width} px)"
                covered = page.evaluate(LABELS_UNDER_BUTTONS)
                assert covered == [], f"{name}: labels run under a button: {covered}"
            browser.close()
        for name, png in shots.items():
            (out / f"studio-{name}.png").write_bytes(png)
            assert len(png) > 10_000
    finally:
        app.close()
