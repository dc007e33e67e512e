"""``var serve``: the API (gradio_client against a server started here on a free local port) and the page in
a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium). One server for the
module, on the bundled model. Screenshots go to $VAR_SCREENSHOTS (a folder) when set, else to a temporary one.
"""
import io
import logging
import os
import re
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio", reason='the web demo needs the web extra: pip install -e ".[web]"')
from gradio_client import Client, handle_file  # noqa: E402

from var import VARPipeline, box_mask  # noqa: E402
from var import serve  # noqa: E402
from var.cli import main as cli  # noqa: E402
from var.images import load_image, to_uint8  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pipe():
    return VARPipeline.from_pretrained("fashion-mnist")


@pytest.fixture(scope="module")
def server(pipe):
    app = serve.build_app(pipe)
    url = serve.launch(app, port=free_port(), block=False)
    yield url
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def shirt(tmp_path_factory) -> Path:
    """A 28x28 garment-like test image: a grey block on black."""
    arr = np.zeros((28, 28), np.uint8)
    arr[4:24, 8:20] = 180
    path = tmp_path_factory.mktemp("images") / "shirt.png"
    Image.fromarray(arr).save(path)
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def expected_pixels(images: torch.Tensor) -> np.ndarray:
    """What the server's PNGs hold for these [0, 1] images (1-channel ones repeated to RGB)."""
    return np.repeat(to_uint8(images), 3, axis=-1)


def editor(path, layers=()) -> dict:
    return {"background": handle_file(str(path)), "layers": [handle_file(str(p)) for p in layers], "composite": None}


# ------------------------------------------------------------------------------------------ the API
def test_generate_returns_model_size_images_reproducible_by_seed(client, pipe):
    gallery, progression, info = client.predict("Dress", 2, None, None, None, None, False, 7, api_name="/generate")
    again, _, _ = client.predict("Dress", 2, None, None, None, None, False, 7, api_name="/generate")
    images = np.stack([pixels(item["image"]) for item in gallery])
    assert images.shape == (2, 28, 28, 3) and "seed 7" in gallery[0]["caption"]
    assert np.array_equal(images, np.stack([pixels(item["image"]) for item in again]))
    # The command shown reproduces it: the same call in-process gives the same pixels.
    assert "--classes 3 --per-class 2" in info and "--seed 7" in info
    assert np.array_equal(images, expected_pixels(pipe(class_labels=[3, 3], seed=7).images))
    assert Image.open(progression).width > 6 * 28     # one image per scale, side by side


def test_null_class_and_a_drawn_seed_are_reported(client):
    gallery, _, info = client.predict("null class", 1, None, None, None, None, False, -1, api_name="/generate")
    seed = int(info.split("--seed ")[1].split()[0].strip("`"))
    assert f"seed {seed}" in gallery[0]["caption"] and "--classes 10 " in info


def test_edit_with_a_box_keeps_the_rest_and_matches_the_pipeline(client, pipe, shirt):
    given, mask, result, info = client.predict(editor(shirt), "box", 0.25, 0.25, 0.75, 0.75, "inpaint", "Dress",
                                               None, None, None, None, False, 3, api_name="/edit")
    image, _ = load_image(shirt, 1, 28)
    box = box_mask(28, 28, 0.25, 0.25, 0.75, 0.75)
    assert pixels(result).shape == (28, 28, 3) and np.array_equal(pixels(given), expected_pixels(image)[0])
    assert np.array_equal(pixels(mask)[..., 0] > 127, box.bool().numpy())
    assert np.array_equal(pixels(result), expected_pixels(pipe.inpaint(image, box, class_labels=3, seed=3).images)[0])
    assert "--class 3" in info and "--mask mask.png" in info


def test_edit_with_painted_layers_and_outpainting_inverts_the_mask(client, shirt, tmp_path):
    layer = np.zeros((28, 28, 4), np.uint8)
    layer[5:10, 5:15] = (255, 59, 48, 255)                  # a brush stroke; the rest transparent
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    _, mask, _, info = client.predict(editor(shirt, [tmp_path / "layer.png"]), "painted", 0, 0, 1, 1, "outpaint",
                                      "null class", None, None, None, None, False, 0, api_name="/edit")
    assert np.array_equal(pixels(mask)[..., 0] > 127, layer[..., 3] == 0) and "--class" not in info


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_edit_takes_a_jpeg_of_any_mode(client, pipe, shirt, tmp_path, mode):
    """The editor converts an upload to RGBA, which Gradio saved in the upload's own format: every JPEG was
    refused ("cannot write mode RGBA as JPEG")."""
    jpeg = tmp_path / f"shirt-{mode}.jpg"
    Image.open(shirt).convert(mode).save(jpeg, quality=95)
    given, _, result, _ = client.predict(editor(jpeg), "box", 0.25, 0.25, 0.75, 0.75, "inpaint", "Dress",
                                         None, None, None, None, False, 3, api_name="/edit")
    image, _ = load_image(jpeg, 1, 28)
    assert np.array_equal(pixels(given), expected_pixels(image)[0])
    box = box_mask(28, 28, 0.25, 0.25, 0.75, 0.75)
    assert np.array_equal(pixels(result), expected_pixels(pipe.inpaint(image, box, class_labels=3, seed=3).images)[0])


def test_vary_keeps_the_scales_asked_for(client, pipe, shirt):
    K = len(pipe.patch_nums)
    image, _ = load_image(shirt, 1, 28)
    everything, _ = client.predict(handle_file(str(shirt)), K, 1, "null class", None, None, None, None, False, 0,
                                   api_name="/vary")
    assert np.array_equal(pixels(everything[0]["image"]), expected_pixels(pipe.decode(pipe.encode(image)))[0])
    two, info = client.predict(handle_file(str(shirt)), 2, 2, "null class", None, None, None, None, False, 5,
                               api_name="/vary")
    assert [item["caption"] for item in two] == ["seed 5", "seed 6"] and "--keep-scales 2" in info
    assert np.array_equal(pixels(two[1]["image"]), expected_pixels(pipe.vary(image, 2, seed=6).images)[0])


def test_bad_requests_get_a_message_and_the_server_keeps_serving(client, shirt, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (serve.MAX_SIDE + 1, 8)).save(tmp_path / "wide.png")
    bad = [((editor(tmp_path / "notes.png"), "box"), "/edit", "the upload is not an image"),
           ((handle_file(str(tmp_path / "notes.png")), 2), "/vary", "the upload is not an image"),
           ((handle_file(str(tmp_path / "wide.png")), 2), "/vary", f"the limit is {serve.MAX_SIDE} on either side"),
           ((editor(shirt), "painted"), "/edit", "the painted region is empty"),
           (("Dress", 1, None, None, None, 0), "/generate", "temperature must be a finite number > 0, got 0")]
    for args, api, message in bad:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(*args, api_name=api)
    gallery, _, _ = client.predict("Bag", 1, None, None, None, None, False, 0, api_name="/generate")
    assert pixels(gallery[0]["image"]).shape == (28, 28, 3)


# ------------------------------------------------------------------------------- without a server
@pytest.mark.parametrize("native", [True, False])
def test_a_bf16_demo_runs_its_pipeline_in_bf16_and_its_command_does_too(pipe, monkeypatch, native):
    """The command shown reproduces the bf16 images: --dtype bf16, and --force-dtype where the CPU emulates it."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    bf16 = VARPipeline.from_pretrained("fashion-mnist", dtype="bf16", force_dtype=not native)
    gallery, _, info, out = serve.Demo(bf16).generate("Sandal", 1, seed=1)
    assert gallery[0][0].size == (28, 28) and torch.equal(out.images, bf16(class_labels=[5], seed=1).images)
    assert not torch.equal(out.images, pipe(class_labels=[5], seed=1).images)
    assert info.endswith("--dtype bf16 --force-dtype`" if not native else "--dtype bf16`")
    assert "--dtype" not in serve.Demo(pipe).generate("Sandal", 1, seed=1)[2]


def test_analytics_are_off(pipe):
    assert serve.build_app(pipe).analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_var_serve_on_a_busy_port_says_only_that(caplog):
    """It said "serving the demo at ..." before finding the port taken."""
    caplog.set_level(logging.INFO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli(["serve", "--port", str(port)]) == 2
    assert f"error: cannot serve on 127.0.0.1 port {port}: " in caplog.text and "choose another --port" in caplog.text
    assert "serving the demo" not in caplog.text


def test_var_serve_without_gradio_says_how_to_install_it(monkeypatch, caplog):
    def missing():
        raise ImportError("No module named 'gradio'")

    monkeypatch.setattr(serve, "import_gradio", missing)
    assert cli(["serve"]) == 2
    assert 'pip install -e ".[web]"' in caplog.text


# ---------------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "no chromium/chromedriver: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run the browser test: .ci/run installs them)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Every host name but the server's fails to resolve: the page must work offline (no CDN, no fonts fetched).
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("VAR_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for_image(driver, selector: str, timeout: float = 60) -> str:
    """The src of the first image under ``selector`` once it shows (fails with any error toast's text)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".toast-body")]
        assert not errors, f"the page shows an error: {errors}"
        images = d.find_elements(By.CSS_SELECTOR, f"{selector} img")
        return images[0].get_attribute("src") if images else False

    return WebDriverWait(driver, timeout).until(shown)


def fetch_pixels(src: str) -> np.ndarray:
    with urllib.request.urlopen(src) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def test_browser_generates_a_chosen_class(browser, server, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "generate-button")))
    choice = browser.find_element(By.CSS_SELECTOR, "#generate-class input")
    choice.click()
    choice.send_keys(Keys.CONTROL, "a")
    choice.send_keys("Sandal")                              # the dropdown filters its options as one types
    WebDriverWait(browser, 10).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, "li[role=option][aria-label=Sandal]"))).click()
    start = time.perf_counter()
    browser.find_element(By.ID, "generate-button").click()
    src = wait_for_image(browser, "#generate-gallery")
    print(f"click to image: {time.perf_counter() - start:.2f} s")
    wait_for_image(browser, "#generate-progression")
    time.sleep(0.5)  # the other thumbnails and the progression finish drawing
    browser.save_screenshot(str(screenshots / "generate.png"))
    assert fetch_pixels(src).shape == (28, 28, 3)
    assert "--classes 5 " in browser.find_element(By.ID, "generate-info").text   # Sandal is class 5


def upload_to_the_edit_tab(browser, server, image) -> None:
    """Open the demo's Edit tab in the browser and load ``image`` into its editor."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[@role='tab' and contains(., 'Edit')]"))).click()
    wait.until(EC.element_to_be_clickable((By.ID, "edit-button")))
    upload = browser.find_element(By.CSS_SELECTOR, "#edit-editor input[type=file]")
    browser.execute_script("arguments[0].style.display = 'block';", upload)   # Selenium types into visible inputs
    upload.send_keys(str(image))
    time.sleep(2)  # the editor loads the image onto its canvas


def test_browser_edits_a_jpeg_in_a_box(browser, server, shirt, tmp_path):
    from selenium.webdriver.common.by import By

    jpeg = tmp_path / "shirt.jpg"
    Image.open(shirt).convert("RGB").save(jpeg)
    upload_to_the_edit_tab(browser, server, jpeg)
    browser.find_element(By.CSS_SELECTOR, "#edit-region input[value=box]").click()
    browser.find_element(By.ID, "edit-button").click()
    mask = fetch_pixels(wait_for_image(browser, "#edit-mask"))[..., 0] > 127
    result = fetch_pixels(wait_for_image(browser, "#edit-result"))
    assert result.shape == (28, 28, 3)
    assert np.array_equal(mask, box_mask(28, 28, 0.25, 0.25, 0.75, 0.75).bool().numpy())


def test_browser_edits_a_painted_region(browser, server, shirt, screenshots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    upload_to_the_edit_tab(browser, server, shirt)
    canvas = browser.find_element(By.CSS_SELECTOR, "#edit-editor canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, -40, -40).click_and_hold() \
        .move_by_offset(40, 20).move_by_offset(30, 30).release().perform()          # a brush stroke
    browser.find_element(By.ID, "edit-button").click()
    mask = fetch_pixels(wait_for_image(browser, "#edit-mask"))[..., 0] > 127
    result = fetch_pixels(wait_for_image(browser, "#edit-result"))
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.5)
    browser.save_screenshot(str(screenshots / "edit.png"))
    assert result.shape == (28, 28, 3)
    assert 0 < mask.mean() < 0.5   # the stroke, not the whole image
