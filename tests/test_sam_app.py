"""``repvit sam app``: the click-to-segment logic (SAM's masks for each click, boxes, segment
everything, the size limit, the downloads), the command line, then the page itself in headless
Chromium: upload, click, the mask appears in the output image (a screenshot is kept)."""

import json
import os
import re
import shutil
import socket
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from repvit.cli import main
from repvit.data import shapes_scene
from repvit.sam import random_sam
from repvit.tools.sam_app import MASK_COLOUR, ClickSegmenter, SamSession, launch_app
from repvit.utils import UserError, flag_text

pytestmark = pytest.mark.sam

SIZE = 128  # the encoder's input: 1024 as released, small here for speed
ARTIFACTS = Path(os.environ.get("REPVIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)  # the decoder's initialisation draws from torch's global generator
    return random_sam(SIZE, deploy=True)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """Shapes on a textured background, not square (SAM pads it) and not the encoder's size (SAM resizes it)."""
    image, _ = shapes_scene(np.random.default_rng(3), 200, 3)
    path = tmp_path_factory.mktemp("pictures") / "shapes.png"
    image.crop((0, 0, 200, 150)).save(path)
    return path


@pytest.fixture
def segmenter(sam, tmp_path):
    return ClickSegmenter(SamSession(sam), tmp_path, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                          points_per_side=4)  # random weights: SAM's thresholds would keep no mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _sam_predictor_mask(sam, image, points, labels, box=None):
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    one_point = len(points) == 1 and box is None
    masks, scores, _ = predictor.predict(np.array(points, dtype=np.float32) if points else None,
                                         np.array(labels) if points else None,
                                         np.array(box, dtype=np.float32) if box else None, multimask_output=one_point)
    return masks[int(np.argmax(scores))]


def test_a_click_adds_a_point_and_gives_sams_mask(segmenter, sam, picture):
    state = segmenter.open(picture)
    assert state.image.shape == (150, 200, 3) and state.mask is None
    assert "click the image" in segmenter.status(state)
    state = segmenter.click(state, 60, 70, "foreground point")
    assert state.points == [(60.0, 70.0)] and state.labels == [1]
    assert state.mask.shape == (150, 200) and 0.005 < state.mask.mean() < 0.995
    assert _iou(state.mask, _sam_predictor_mask(sam, state.image, [(60, 70)], [1])) == 1.0  # SamPredictor's mask
    status = segmenter.status(state)
    assert re.search(r"encoder \d+ ms \(once per image\), decoder [\d.]+ ms \(this click\)", status), status
    first = state.mask.copy()
    state = segmenter.click(state, 150, 30, "background point")
    assert state.labels == [1, 0]
    assert _iou(state.mask, _sam_predictor_mask(sam, state.image, [(60, 70), (150, 30)], [1, 0])) == 1.0
    assert not np.array_equal(first, state.mask)
    view = segmenter.view(state)
    assert view.shape == state.image.shape and not np.array_equal(view, state.image)
    state = segmenter.clear(state)
    assert state.points == [] and state.mask is None
    assert np.array_equal(segmenter.view(state), state.image)


def test_two_clicks_in_box_mode_draw_a_box(segmenter, sam, picture):
    state = segmenter.open(picture)
    state = segmenter.click(state, 120, 100, "box corner")
    assert state.corner == (120.0, 100.0) and state.mask is None
    assert "opposite corner" in segmenter.status(state)
    state = segmenter.click(state, 20, 10, "box corner")
    assert state.box == (20.0, 10.0, 120.0, 100.0) and state.corner is None
    assert _iou(state.mask, _sam_predictor_mask(sam, state.image, [], [], (20, 10, 120, 100))) == 1.0
    with pytest.raises(UserError, match="must differ"):
        segmenter.click(segmenter.click(state, 5, 5, "box corner"), 5, 40, "box corner")


def test_an_image_over_the_size_limit_gets_a_one_line_message(sam, picture, tmp_path):
    small_limit = ClickSegmenter(SamSession(sam), tmp_path, max_pixels=10_000)
    with pytest.raises(UserError) as err:
        small_limit.open(picture)
    message = flag_text(err.value)
    assert "200x150 image (0.0 megapixels) is over the limit of 0.01 megapixels (--max-pixels)" in message
    assert "\n" not in message
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a readable image"):
        small_limit.open(tmp_path / "broken.png")


def test_the_downloads_hold_the_mask_as_png_and_coco_rle(segmenter, picture):
    mask_utils = pytest.importorskip("pycocotools.mask")
    state = segmenter.click(segmenter.open(picture), 60, 70, "foreground point")
    png, rle_json = segmenter.downloads(state)
    assert np.array_equal(np.asarray(Image.open(png)) > 0, state.mask)
    info = json.loads(Path(rle_json).read_text())
    assert info["size"] == [150, 200] and info["area"] == int(state.mask.sum())
    assert info["prompt"] == {"points": [[60.0, 70.0]], "labels": [1], "box": None}
    assert np.array_equal(mask_utils.decode(info["segmentation"]).astype(bool), state.mask)
    x, y, w, h = info["bbox"]
    ys, xs = np.nonzero(state.mask)
    assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert segmenter.downloads(segmenter.clear(state)) == (None, None)


def test_segment_everything_reuses_the_embedding(segmenter, picture, monkeypatch):
    mask_utils = pytest.importorskip("pycocotools.mask")
    state = segmenter.open(picture)
    monkeypatch.setattr(segmenter.session, "encode", lambda image: pytest.fail("the encoder ran again"))
    state = segmenter.everything(state)
    assert state.everything and all(m["segmentation"].shape == (150, 200) for m in state.everything)
    assert [m["area"] for m in state.everything] == sorted((m["area"] for m in state.everything), reverse=True)
    assert "segment everything" in segmenter.status(state) and "4x4 point prompts" in segmenter.status(state)
    png, rle_json = segmenter.downloads(state)
    labels = np.asarray(Image.open(png))
    masks = json.loads(Path(rle_json).read_text())["masks"]
    assert len(masks) == len(state.everything) and labels.max() <= len(masks)
    last = masks[-1]  # drawn last: all its pixels carry its id
    assert np.all(labels[mask_utils.decode(last["segmentation"]).astype(bool)] == last["id"])
    assert not np.array_equal(segmenter.view(state), state.image)


def test_a_large_image_is_shown_smaller_and_clicks_map_back(segmenter, tmp_path, monkeypatch):
    monkeypatch.setattr("repvit.tools.sam_app.VIEW_SIDE", 100)
    Image.fromarray(np.full((150, 300, 3), 90, dtype=np.uint8)).save(tmp_path / "wide.png")
    state = segmenter.open(tmp_path / "wide.png")
    assert segmenter.view(state).shape == (50, 100, 3)
    state = segmenter.click(state, 50, 25, "foreground point")  # the middle of the shown image
    assert state.points == [(150.0, 75.0)] and state.mask.shape == (150, 300)


def test_the_command_checks_its_arguments_before_loading_weights(capsys):
    with pytest.raises(SystemExit) as done:
        main(["sam", "app", "--help"])
    assert done.value.code == 0 and "--runtime {eager,onnxruntime,executorch}" in capsys.readouterr().out
    assert main(["sam", "app", "--port", "70000", "--weights", "missing.pt"]) == 2
    assert "--port must be between 1 and 65535, got 70000" in capsys.readouterr().err
    assert main(["sam", "app", "--max-pixels", "0", "--weights", "missing.pt"]) == 2
    assert "--max-pixels must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.export
def test_onnxruntime_gives_the_eager_masks_and_reuses_its_export(sam, picture, tmp_path):
    pytest.importorskip("onnxruntime")
    eager = ClickSegmenter(SamSession(sam), tmp_path / "eager")
    onnx = ClickSegmenter(SamSession(sam, "onnxruntime", tmp_path / "export"), tmp_path / "onnx")
    for points, labels, box in [([(60, 70)], [1], None), ([(60, 70), (150, 30)], [1, 0], (20, 10, 120, 100))]:
        ours, theirs = eager.open(picture), onnx.open(picture)
        masks = [s.session.decode(state.embedding, points, labels, box)[0][0] for s, state in
                 ((eager, ours), (onnx, theirs))]
        assert _iou(*masks) >= 0.99
    stamp = tmp_path / "export" / "sam_app_onnx.json"
    written = stamp.stat().st_mtime_ns
    start = time.perf_counter()
    SamSession(sam, "onnxruntime", tmp_path / "export")
    assert time.perf_counter() - start < 5 and stamp.stat().st_mtime_ns == written  # reused, not exported again


# --- the page in a real browser -----------------------------------------------------------------

def _browser():
    """Headless Chromium driven by Selenium, or a one-line skip saying what is missing and how to install it."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    missing = [name for name, found in (("chromium", chromium), ("chromedriver", driver), ("selenium", webdriver))
               if not found]
    if missing:
        apt = [package for name, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver"))
               if name in missing]
        how = ([f"apt-get install -y {' '.join(apt)}"] if apt else []) + (
            ["pip install 'repvit-toolkit[dev]'"] if "selenium" in missing else [])
        pytest.skip(f"browser test: missing {', '.join(missing)} (install: {'; '.join(how)})")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_segments_a_click_in_headless_chromium(sam, picture):
    pytest.importorskip("gradio", reason="gradio: pip install 'repvit-toolkit[app]'")
    driver = _browser()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    app = launch_app(sam=sam, runtime="eager", port=port, block=False)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 30)
        status = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sam-status"))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sam-input input[type=file]")).send_keys(str(picture))
        wait.until(lambda d: "encoder" in status.text)
        shown = driver.find_element(By.CSS_SELECTOR, "#sam-view img")
        before = shown.get_attribute("src")
        natural_w, natural_h, box_w, box_h, fit = driver.execute_script(
            "const i = arguments[0]; return [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight, "
            "getComputedStyle(i).objectFit];", shown)
        assert (natural_w, natural_h) == (200, 150)
        # the picture is centred in its box, fitted into it ("contain"), or only shrunk to fit ("scale-down")
        scale = {"none": 1.0}.get(fit, min(box_w / natural_w, box_h / natural_h))
        scale = min(scale, 1.0) if fit == "scale-down" else scale
        click = (60, 70)
        ActionChains(driver).move_to_element_with_offset(
            shown, round((click[0] + 0.5 - natural_w / 2) * scale), round((click[1] + 0.5 - natural_h / 2) * scale)
        ).click().perform()
        wait.until(lambda d: "decoder" in status.text)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sam-view img").get_attribute("src") != before)
        after = driver.find_element(By.CSS_SELECTOR, "#sam-view img").get_attribute("src")
        with urllib.request.urlopen(after, timeout=10) as response:
            output = np.asarray(Image.open(BytesIO(response.read())).convert("RGB")).astype(np.float32)
        text = status.text
    finally:
        try:
            driver.save_screenshot(str(ARTIFACTS / "sam_app.png"))
        finally:
            driver.quit()
            app.close()
    image = np.asarray(Image.open(picture).convert("RGB")).astype(np.float32)
    assert output.shape == image.shape
    area = int(re.search(r"mask (\d+) px", text).group(1))
    changed = np.abs(output - image).max(axis=-1) > 4
    # the overlay covers SAM's mask (the reported area, give or take the point marker), not the whole image
    assert 0.005 * changed.size <= changed.sum() <= 0.995 * changed.size, text
    assert abs(int(changed.sum()) - area) <= 0.02 * area + 60, (int(changed.sum()), text)
    # ... blended half-and-half with the mask colour (the marker aside)
    away = changed.copy()
    away[max(0, click[1] - 8):click[1] + 9, max(0, click[0] - 8):click[0] + 9] = False
    blended = (2 * output - image)[away].mean(axis=0)
    assert np.abs(blended - MASK_COLOUR).max() <= 3, blended
    # the click landed where it was aimed: the foreground marker is drawn there
    assert np.abs(output[click[1], click[0]] - (40, 200, 60)).max() <= 3, output[click[1], click[0]]
